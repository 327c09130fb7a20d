"""make run prints the dashboard's address; MONITORING=1 adds Prometheus with the rules."""
import pytest
import requests
import yaml

from conftest import free_port, wait_for
from stack.prometheus import RULES
from stack.services import port_is_free


@pytest.mark.slow
def test_monitoring_run_starts_prometheus_scraping_the_api_with_the_rules(orders_stack):
    prometheus_port = free_port()
    run = orders_stack(MONITORING="1", PROMETHEUS_PORT=str(prometheus_port))
    wait_for(lambda: run.assert_running() or "running; Ctrl-C" in run.text(), 180,
             message="the stack running")
    text = run.text()
    assert f"Dashboard: {run.api}/dashboard" in text
    assert requests.get(f"{run.api}/dashboard", timeout=10).status_code == 200
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    assert f"Prometheus: {prometheus}/alerts" in text

    def api(path):
        answer = requests.get(f"{prometheus}/api/v1/{path}", timeout=5).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    [target] = wait_for(lambda: [t for t in api("targets")["activeTargets"]
                                 if t["health"] == "up"], 60, message="the API scraped")
    assert target["labels"]["job"] == "orders-api"
    assert target["scrapeUrl"] == f"{run.api}/metrics"
    shipped = sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])
    assert sum(len(group["rules"]) for group in api("rules")["groups"]) == shipped
    # The pipeline's figures went through: the run's live workers, the orders worker and
    # the files worker, by their heartbeats.
    def live_workers():
        result = api("query?query=orders_workers_live")["result"]
        return result and result[0]["value"][1]

    assert wait_for(lambda: live_workers() == "2", 60,
                    message="orders_workers_live 2 in Prometheus")

    assert run.stop() == 0, run.text()
    assert port_is_free(prometheus_port)
