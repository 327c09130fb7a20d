"""Debian's Prometheus with the shipped rules, scraping the API: `MONITORING=1 make run` and
the tests of the rules (tests/monitoring) start it through here."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from stack.services import PROJECT_ROOT, Process, ServiceError, free_port, wait_http

RULES = PROJECT_ROOT / "deploy" / "monitoring" / "rules.yml"
# The job name the rules and the Grafana dashboard expect (deploy/monitoring/prometheus.yml).
JOB = "orders-api"


def binary(name: str) -> str:
    """Path of a program of Debian's prometheus package; an error naming the fix if absent."""
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"{name} is not installed: `make prometheus` (Debian's prometheus "
                           f"package)")
    return path


def write_config(directory: Path, targets: list[str], rules: dict | None = None,
                 interval: str = "5s") -> Path:
    """prometheus.yml scraping the API at targets (host:port) as job orders-api, with the
    shipped rules (or the rules given); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    rules_file = RULES
    if rules is not None:
        rules_file = directory / "rules.yml"
        rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules_file)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
    }, sort_keys=False))
    return config


def prometheus_command(config: Path, data_dir: Path, port: int) -> list[str]:
    """The server on 127.0.0.1:port (loopback only) with config, its data in data_dir."""
    return [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}"]


class PrometheusServer:
    """Prometheus on a loopback port (a free one unless given), its files in directory."""

    def __init__(self, directory: Path, targets: list[str], rules: dict | None = None,
                 interval: str = "5s", port: int | None = None,
                 log_dir: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = write_config(directory, targets, rules, interval)
        self.process = Process("prometheus",
                               prometheus_command(config, directory / "data", self.port),
                               log_dir=log_dir or directory, cwd=directory)

    def start(self, timeout: float = 30) -> "PrometheusServer":
        """Start it and wait until it is ready."""
        self.process.start()
        wait_http(f"{self.url}/-/ready", self.process, timeout, status=200)
        return self

    def stop(self) -> None:
        """Stop it (it writes its head block first)."""
        self.process.stop(timeout=15)
