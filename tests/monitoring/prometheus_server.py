"""The shipped rules and dashboard, Debian's promtool and a real Prometheus (tests/monitoring)."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from stack import prometheus
from stack.prometheus import RULES, PrometheusServer

ROOT = Path(__file__).resolve().parents[2]
MONITORING = RULES.parent
HERE = Path(__file__).resolve().parent
RULE_TESTS = sorted(HERE.glob("rules_test*.yml"))


def binary(name: str) -> str:
    """Path of a program of Debian's prometheus package; a failure naming the fix if absent."""
    try:
        return prometheus.binary(name)
    except prometheus.ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)


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


class Prometheus(PrometheusServer):
    """stack/prometheus.py's server for a test: a context manager that answers queries."""

    def __init__(self, directory: Path, targets: list[str], rules: dict,
                 interval: str = "1s"):
        binary("prometheus")
        super().__init__(directory, targets, rules, interval)

    def __enter__(self) -> "Prometheus":
        return self.start()

    def __exit__(self, *exc):
        self.stop()

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
