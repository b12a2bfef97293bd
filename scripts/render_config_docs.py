"""Write config.yaml (every key at its default, commented) and docs/config.md from the schema.

Run after changing workflow_scripts/schemas/config.schema.yaml:
    python scripts/render_config_docs.py
tests/test_config.py fails when config.yaml and the schema's defaults disagree.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts.config import load_schema, validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _resolve(schema, root):
    if "$ref" in schema:
        return {**root["definitions"][schema["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _fmt(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def render_yaml(schema, data, root, indent=0) -> list[str]:
    lines = []
    props = schema.get("properties", {})
    for key, value in data.items():
        sub = _resolve(props.get(key, {}), root)
        desc = sub.get("description", "").strip().replace("\n", " ")
        pad = "  " * indent
        if desc:
            lines.append(f"{pad}# {desc}")
        if isinstance(value, dict) and value and sub.get("properties"):
            lines.append(f"{pad}{key}:")
            lines += render_yaml(sub, value, root, indent + 1)
        else:
            dumped = yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False).strip()
            lines.append(pad + dumped[1:-1] if dumped.startswith("{") else pad + dumped)
    return lines


def render_md(schema, root, prefix="") -> list[str]:
    rows = []
    for key, sub in schema.get("properties", {}).items():
        sub = _resolve(sub, root)
        name = f"{prefix}{key}"
        if sub.get("properties"):
            rows += render_md(sub, root, name + ".")
        else:
            d = sub.get("description", "").strip().replace("\n", " ").replace("|", "\\|")
            t = sub.get("type", "object")
            rows.append(f"| `{name}` | {t if isinstance(t, str) else ' or '.join(t)} | `{_fmt(sub.get('default', ''))}` | {d} |")
    return rows


def main() -> None:
    schema = load_schema()
    defaults = validate({})
    head = ["# mouse-facelift configuration: every key at its default.",
            "# Generated from workflow_scripts/schemas/config.schema.yaml by scripts/render_config_docs.py;",
            "# change values here, change the schema there. Keys are documented in docs/config.md.", ""]
    (ROOT / "config.yaml").write_text("\n".join(head + render_yaml(schema, defaults, schema)) + "\n")
    md = ["# Configuration keys", "", "Generated from the schema by `scripts/render_config_docs.py`.", "",
          "| key | type | default | meaning |", "|---|---|---|---|"] + render_md(schema, schema)
    (ROOT / "docs" / "config.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
