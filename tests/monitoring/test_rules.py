"""deploy/monitoring/rules.yml: valid, every alert documented and proven by promtool tests."""
from __future__ import annotations

import re

import pytest
import yaml
from markdown.extensions.toc import slugify

from prometheus_server import HERE, ROOT, RULE_TESTS, RULES, alerting_rules, promtool

SEVERITIES = {"critical", "warning"}


def test_promtool_accepts_the_rules():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    count = sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])
    assert f"SUCCESS: {count} rules found" in checked.stdout


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(test_file):
    tested = promtool("test", "rules", test_file.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_firing_and_not_firing():
    firing, quiet = set(), set()
    for test_file in RULE_TESTS:
        document = yaml.safe_load(test_file.read_text())
        # promtool resolves it from the test file's directory: the shipped file itself.
        assert [(HERE / path).resolve() for path in document["rule_files"]] == [RULES]
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerting_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_every_alert_says_how_bad_what_and_what_to_do():
    for rule in alerting_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        # The description is the runbook line: static text, the summary carries the values.
        assert "{{" not in annotations["description"], name


def _anchors(page: str) -> set[str]:
    """The ids MkDocs gives the headings of a docs page (the toc extension's slugs)."""
    text = (ROOT / "docs" / page).read_text()
    return {slugify(title.strip(), "-") for title in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_every_runbook_url_is_a_heading_of_the_docs():
    for rule in alerting_rules():
        page, _, anchor = rule["annotations"]["runbook_url"].partition("/#")
        assert anchor, rule["alert"]
        assert anchor in _anchors(f"{page}.md"), (rule["alert"], page, anchor)
