"""docs/config.md, generated from the schema (``safehold config docs > docs/config.md``)."""

from __future__ import annotations

from typing import Any

from safehold.platform.schema import (
    COMMON_COMPONENT_FIELDS,
    HOOKS,
    RETENTION,
    SCHEDULE,
    SERVICES,
    VIA,
    component_schema,
    platform_schema,
)
from safehold.sources import kinds

HEADER = """# Platform file reference

Generated from the schema by `safehold config docs` (do not edit by hand; a test checks it is
current). The machine-readable schema: `safehold config schema`. Write `${VAR}` or
`${VAR:-default}` in any string to take it from the environment (or `env_file`); passwords
must come that way or from `password_file`, never literally.

"""


def _type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " \\| ".join(f"`{value}`" for value in schema["enum"])
    if schema.get("type") == "array":
        return f"list of {schema.get('items', {}).get('type', 'values')}"
    if "oneOf" in schema:
        return "string or mapping"
    return str(schema.get("type", "mapping"))


def _section(title: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", ""]
    if schema.get("description"):
        lines += [schema["description"], ""]
    required = set(schema.get("required", []))
    lines += ["| key | type | required | default | meaning |", "|---|---|---|---|---|"]
    for key, value in schema["properties"].items():
        default = f"`{value['default']}`" if "default" in value else ""
        meaning = value.get("description", "").replace("|", "\\|")
        lines.append(
            f"| `{key}` | {_type(value)} | {'yes' if key in required else ''} | "
            f"{default} | {meaning} |"
        )
    return lines + [""]


def config_reference() -> str:
    """The Markdown reference of every key."""
    lines = _section("Top level", platform_schema())
    common = component_schema()
    lines += _section(
        "components[]",
        {**common, "properties": {**common["properties"], **COMMON_COMPONENT_FIELDS}},
    )
    for kind in kinds().values():
        also = f" (also `{'`, `'.join(kind.aliases)}`)" if kind.aliases else ""
        properties = dict(kind.properties)
        lines += _section(
            f"components[] of type `{kind.name}`{also}",
            {
                "description": f"{kind.description[0].upper()}{kind.description[1:]}; "
                "these keys, besides the common ones above.",
                "required": list(kind.required),
                "properties": properties,
            },
        )
    lines += _section("via (mapping form)", VIA["oneOf"][1])
    lines += _section("services", SERVICES)
    lines += _section("hooks", HOOKS)
    lines += _section("retention", RETENTION)
    lines += _section("schedule", SCHEDULE)
    return HEADER + "\n".join(lines)
