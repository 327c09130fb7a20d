"""The Grafana dashboard: the committed JSON is what deploy/monitoring/dashboard.py builds."""
from __future__ import annotations

import json

import yaml

from prometheus_server import MONITORING, generator, promtool, targets


def test_committed_dashboard_is_the_generated_one():
    module = generator()
    committed = module.OUTPUT.read_text()
    assert module.render() == committed, "regenerate it: make dashboard"
    assert module.OUTPUT.parent == MONITORING / "grafana" / "dashboards"


def test_every_panel_queries_the_chosen_data_source_with_valid_promql(tmp_path):
    dashboard = json.loads(generator().OUTPUT.read_text())
    [variable] = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    queries = targets(dashboard)
    assert len(queries) >= 15
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == "${datasource}", panel["title"]
            assert panel["targets"] and panel["gridPos"]["w"] > 0, panel["title"]
    # promtool parses each query as the expression of a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": target["expr"]}
        for i, target in enumerate(queries)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_panels_do_not_overlap():
    dashboard = json.loads(generator().OUTPUT.read_text())
    cells = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine
