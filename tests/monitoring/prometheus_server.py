"""The shipped rules and dashboard, Debian's promtool and a real Prometheus (tests/monitoring)."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from stack.services import Process, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules.yml"
HERE = Path(__file__).resolve().parent
RULE_TESTS = sorted(HERE.glob("rules_test*.yml"))


def binary(name: str) -> str:
    """Path of a program of Debian's prometheus package; a failure naming the fix if absent."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make prometheus` (Debian's prometheus package)",
                    pytrace=False)
    return path


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run promtool; its output on failure."""
    return subprocess.run([binary("promtool"), *args], input=stdin, capture_output=True,
                          text=True, timeout=120, cwd=HERE)


def alerting_rules() -> list[dict]:
    """Every alerting rule of the shipped rules file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def generator():
    """deploy/monitoring/dashboard.py, the dashboard's generator, as a module (no package)."""
    spec = importlib.util.spec_from_file_location("orders_dashboard", MONITORING / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def targets(dashboard: dict) -> list[dict]:
    """Every query of a dashboard's panels."""
    return [target for panel in dashboard["panels"] for target in panel.get("targets", [])]


def rules_with_for(duration: str) -> dict:
    """The shipped rules with every alert's `for` replaced, for a test that cannot wait."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = duration
    return document


class Prometheus:
    """Debian's Prometheus server on a free loopback port, a temporary data directory."""

    def __init__(self, directory: Path, targets: list[str], rules: dict,
                 interval: str = "1s", job: str = "orders-api"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules_file = directory / "rules.yml"
        rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))
        config = directory / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(rules_file)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        }))
        self.process = Process("prometheus", [
            binary("prometheus"), f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}"], log_dir=directory, cwd=directory)

    def __enter__(self) -> "Prometheus":
        self.process.start()

        def ready():
            assert self.process.running, self.process.log_tail()
            try:
                return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, timeout=30, message="Prometheus to be ready")
        return self

    def __exit__(self, *exc):
        self.process.stop(timeout=15)

    def api(self, path: str, **params) -> dict | list:
        """The data of an HTTP API answer (/api/v1/...)."""
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=5).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's vector."""
        return self.api("query", query=expr)["result"]

    def alerts(self, name: str) -> list[dict]:
        """The active alerts of that name, pending or firing."""
        return [alert for alert in self.api("alerts")["alerts"]
                if alert["labels"]["alertname"] == name]
