"""The Monitoring page lists every alert of deploy/monitoring/rules.yml with its runbook."""
from __future__ import annotations

import html
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_monitoring_page_lists_every_alert_with_what_to_do_and_its_runbook(site):
    page = (site / "monitoring" / "index.html").read_text()
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())
    groups = yaml.safe_load((ROOT / "deploy" / "monitoring" / "rules.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert alerts
    for rule in alerts:
        name = rule["alert"]
        section = page.split(f'id="{name.lower()}"', 1)
        assert len(section) == 2, f"{name} has no heading on the Monitoring page"
        runbook = rule["annotations"]["runbook_url"]
        # The section's "runbook" link, as the built site links it.
        link = re.search(r'href="([^"]+)"[^>]*>runbook</a>', section[1].split("<h3", 1)[0])
        assert link and link.group(1) == f"../{runbook}", name
        # What to do, its `code` rendered as code.
        assert " ".join(rule["annotations"]["description"].replace("`", "").split()) in text, name
        assert (site / runbook.split("#")[0] / "index.html").is_file(), name
