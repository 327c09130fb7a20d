"""MkDocs hooks: the configuration and API reference pages, generated from the code.

A page asks for a generated part with a marker line:

- `<!-- settings: Settings -->` (or `StackSettings`): a table of that dataclass's fields,
  from `app/settings.py`, the one place that reads the environment;
- `<!-- openapi -->`: every route of the OpenAPI document the Flask app generates, which
  is also published beside the pages as `openapi.json`.
"""
from __future__ import annotations

import json
import re
from dataclasses import MISSING, fields

from mkdocs.structure.files import File

from app import settings as app_settings

MARKER = re.compile(r"^<!-- (settings: (\w+)|openapi) -->$", re.MULTILINE)
SPEC_NAME = "openapi.json"


def settings_table(cls) -> str:
    """A Markdown table of a settings dataclass: variable, type, default, what it does."""
    rows = ["| Variable | Type | Default | What it does |", "| --- | --- | --- | --- |"]
    for field in fields(cls):
        if field.default is MISSING or "doc" not in field.metadata:
            raise ValueError(f"{cls.__name__}.{field.name} needs a default and a doc text")
        default = f"`{field.default}`" if field.default != "" else "(empty)"
        rows.append(f"| `{field.name.upper()}` | {type(field.default).__name__} | {default} "
                    f"| {_cell(field.metadata['doc'])} |")
    return "\n".join(rows)


def openapi_spec() -> dict:
    """The OpenAPI document of the API, as /openapi.json serves it (no Redis needed)."""
    from web import create_app  # imported here: building the app is the slow part
    client = create_app(app_settings.Settings()).test_client()
    return client.get("/" + SPEC_NAME).get_json()


def openapi_markdown(spec: dict) -> str:
    """Every operation of the document, grouped by tag: parameters, responses, fields."""
    schemas = spec.get("components", {}).get("schemas", {})
    lines = []
    for tag in spec.get("tags", []):
        lines += [f"### {tag['description']}", ""]
        for path, operations in spec["paths"].items():
            shared = operations.get("parameters", [])
            for method, operation in operations.items():
                if method == "parameters" or tag["name"] not in operation.get("tags", []):
                    continue
                lines += [f"#### {method.upper()} `{path}`", "", operation.get("summary", ""), ""]
                if operation.get("description"):
                    lines += [" ".join(operation["description"].split()), ""]
                lines += _parameters(shared + operation.get("parameters", []))
                lines += _responses(operation["responses"], schemas)
    return "\n".join(lines)


def _parameters(parameters: list[dict]) -> list[str]:
    if not parameters:
        return []
    rows = ["| Parameter | In | Type | Default | Meaning |", "| --- | --- | --- | --- | --- |"]
    for p in parameters:
        schema = p.get("schema", {})
        kind = "|".join(map(str, schema["enum"])) if "enum" in schema else _type(schema)
        default = f"`{schema['default']}`" if "default" in schema else (
            "required" if p.get("required") else "")
        rows.append(f"| `{p['name']}` | {p['in']} | {_cell(kind)} | {default} "
                    f"| {_cell(p.get('description', ''))} |")
    return rows + [""]


def _responses(responses: dict, schemas: dict) -> list[str]:
    lines = []
    for status, response in responses.items():
        if "$ref" in response or status == "default":
            continue  # the shared error responses, described once on the page
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        name = _ref_name(schema.get("items", schema))
        shape = f"a list of `{name}`" if schema.get("type") == "array" else f"`{name}`"
        lines.append(f"- **{status}** {response['description']}" + (f": {shape}" if name else ""))
        lines += _fields(name, schemas, indent="    ")
    return lines + [""]


def _fields(name: str, schemas: dict, indent: str) -> list[str]:
    """A schema's fields as a nested list; a field of another schema lists that one's too."""
    lines = []
    for key, value in schemas.get(name, {}).get("properties", {}).items():
        about = f": {value['description']}" if "description" in value else ""
        lines.append(f"{indent}- `{key}` ({_type(value)}){about}")
        inner = _ref_name(value.get("items", value))
        if inner and inner != name:
            lines += _fields(inner, schemas, indent + "    ")
    return lines


def _type(schema: dict) -> str:
    if "$ref" in schema:
        return _ref_name(schema)
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}))}"
    kind = schema.get("type", "object")
    return f"{kind} ({schema['format']})" if "format" in schema else kind


def _ref_name(schema: dict) -> str:
    return schema.get("$ref", "").rsplit("/", 1)[-1]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def on_files(files, config):
    """Publish the generated OpenAPI document beside the pages."""
    files.append(File.generated(config, SPEC_NAME, content=json.dumps(openapi_spec(), indent=2)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Replace each marker line with the part it names."""
    def part(match):
        if match.group(2):
            return settings_table(getattr(app_settings, match.group(2)))
        return openapi_markdown(json.loads(files.get_file_from_path(SPEC_NAME).content_string))
    return MARKER.sub(part, markdown)
