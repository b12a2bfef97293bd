"""Load and validate the pipeline configuration against its JSON schema.

The schema (``workflow_scripts/schemas/config.schema.yaml``) documents every key and its
default; validation fills in defaults, so rules can index ``config[...]`` without guards.
Unknown keys and wrong types are errors with the key's path in the message.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("schemas") / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration does not match the schema."""


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _fill_defaults(schema: dict[str, Any], data: Any, root: dict[str, Any]) -> Any:
    """Recursively insert ``default`` values of object properties (JSON Schema does not)."""
    if "$ref" in schema:  # only local refs: "#/definitions/name"
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[-1]]
    if schema.get("type") == "object" and isinstance(data, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in data and "default" in sub:
                data[key] = copy.deepcopy(sub["default"])
            elif isinstance(data.get(key), dict) and isinstance(sub.get("default"), dict):
                # A section's own defaults (e.g. train_mouse's) stay under a partial user section.
                data[key] = _deep_merge(sub["default"], data[key])
            if key in data:
                data[key] = _fill_defaults(sub, data[key], root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in data:
                if key not in schema.get("properties", {}):
                    data[key] = _fill_defaults(extra, data[key], root)
    return data


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Return a validated copy of ``config`` with defaults filled in.

    Raises ConfigError naming the offending key (e.g. ``crop.image_size``) and what was expected.
    """
    schema = load_schema()
    data = _fill_defaults(schema, copy.deepcopy(config or {}), schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
            lines.append(f"  {where}: {e.message}")
        raise ConfigError(f"{source}: invalid configuration:\n" + "\n".join(lines)
                          + "\nFix the keys above; every key and its default is documented in config.yaml and the README.")
    return data


def load(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    path = Path(path)
    return validate(yaml.safe_load(path.read_text()) or {}, source=str(path))
