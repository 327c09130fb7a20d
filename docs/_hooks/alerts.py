"""MkDocs hook: the alerts of deploy/monitoring/rules.yml, generated into the page that asks.

A page asks with the marker line `<!-- alerts -->`: each alert becomes a heading with its
severity, its `for`, its summary, what to do (its description), a link to its runbook
section (its `runbook_url`, relative to the site) and its expression. A runbook link to a
missing heading fails the strict build.
"""
from __future__ import annotations

from pathlib import Path

import yaml

MARKER = "<!-- alerts -->"
RULES = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "rules.yml"


def alerts_markdown(rules: dict) -> str:
    """Every alerting rule as a section, in the file's order."""
    lines = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            notes = rule["annotations"]
            page, _, anchor = notes["runbook_url"].partition("/#")
            lines += [f"### {rule['alert']}", "",
                      f"**{rule['labels']['severity']}**, after {rule.get('for', '0s')} · "
                      f"[runbook]({page}.md#{anchor})", "",
                      f"*{notes['summary']}*", "",
                      " ".join(notes["description"].split()), "",
                      "```promql", rule["expr"].strip(), "```", ""]
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    """Replace the marker line with the alerts."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, alerts_markdown(yaml.safe_load(RULES.read_text())))
