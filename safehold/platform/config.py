"""Loading a platform file: YAML (or JSON) -> interpolation -> schema validation -> checks.

Errors name the place: ``at components[1].databases: expected a list of names``.
Secrets are resolved here, from the environment (``${VAR}``) or a ``password_file``; they
never come from the command line and are never written into snapshots or logs.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from safehold.errors import SafeholdError
from safehold.platform.cron import CronError, parse
from safehold.platform.schema import JOBS, platform_schema
from safehold.secrecy import remember
from safehold.sources import kind_of

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TYPE_NAMES = {
    "array": "a list",
    "object": "a mapping",
    "string": "a string",
    "integer": "an integer",
    "boolean": "true or false",
    "number": "a number",
}


class ConfigError(SafeholdError):
    """{file}: {message}"""

    exit_code = 21


class UnsetVariable(ConfigError):
    """{file}: {message}"""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicated keys (PyYAML silently keeps the last one)."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict:
    seen: dict = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicated key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML with duplicate-key detection; ConfigError with the line on failure."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}{problem}", file=source) from None


def format_path(parts: list) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the top level"


def _describe(error: jsonschema.ValidationError) -> str:
    validator, schema = error.validator, error.schema
    if validator == "type":
        expected = _TYPE_NAMES.get(schema["type"], schema["type"])
        if schema["type"] == "array" and schema.get("items", {}).get("type") == "string":
            expected = "a list of names"
        return f"expected {expected}"
    if validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        return f"missing required key {missing[0]!r}" if missing else error.message
    if validator == "additionalProperties":
        unknown = re.findall(r"'([^']+)'", error.message)
        return f"unknown key {unknown[0]!r}" if unknown else error.message
    if validator == "enum":
        return "expected one of: " + ", ".join(str(value) for value in schema["enum"])
    if validator == "oneOf" and "via" in error.absolute_path:
        return "expected `local`, `ssh://user@host[:port]` or a mapping with `exec:`"
    if validator == "minItems":
        return "must not be empty"
    if validator == "pattern":
        return (
            f"{error.instance!r} is not allowed here ({schema.get('description', error.message)})"
        )
    return error.message


def _problems(error: jsonschema.ValidationError) -> list[str]:
    path = list(error.absolute_path)
    instance = error.instance
    if (
        error.validator == "additionalProperties"
        and isinstance(instance, dict)
        and "then" in error.schema_path
        and "type" in instance
    ):
        # A key another kind takes (``paths`` on a postgres component): name it and the kind.
        allowed = error.schema.get("properties", {})
        return [
            f"at {format_path([*path, key])}: unknown key for a {instance['type']} component"
            for key in instance
            if key not in allowed
        ]
    return [f"at {format_path(path)}: {_describe(error)}"]


def validation_errors(document: Any) -> list[str]:
    """All schema and consistency problems of a parsed document, as 'at PATH: problem'."""
    validator = jsonschema.Draft202012Validator(platform_schema())
    problems = [
        problem
        for error in sorted(
            validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))
        )
        for problem in _problems(error)
    ]
    if problems or not isinstance(document, dict):
        return problems or ["at the top level: expected a mapping"]
    return _consistency_errors(document)


def _consistency_errors(document: dict) -> list[str]:
    problems = []
    names: dict[str, int] = {}
    for position, component in enumerate(document["components"]):
        where = f"at components[{position}]"
        if component["name"] in names:
            problems.append(
                f"{where}.name: {component['name']!r} is already used by "
                f"components[{names[component['name']]}]"
            )
        names.setdefault(component["name"], position)
        password = component.get("password")
        if password is not None and not _VARIABLE.fullmatch(password):
            problems.append(
                f"{where}.password: write ${{VARIABLE}} and set it in the environment, "
                "or use password_file: a password in the file itself is refused"
            )
        given = [key for key in ("password", "password_file") if key in component]
        if "password_env" in component and given:
            problems.append(
                f"{where}.password_env: the password comes from the target's environment, "
                f"so {given[0]} must go"
            )
        via = component.get("via")
        if isinstance(via, dict):
            required = {
                "compose": "service",
                "docker": "container",
                "kubectl": "pod",
                "ssh": "host",
            }
            needed = required.get(via["exec"])
            if via["exec"] == "kubectl" and "selector" in via:
                needed = None if "pod" not in via else "pod or selector, not both"
                if needed:
                    problems.append(f"{where}.via: exec kubectl takes {needed}")
                    needed = None
            if needed and needed not in via:
                problems.append(f"{where}.via: exec {via['exec']} needs `{needed}`")
        kind = kind_of(component["type"])
        if kind.validate is not None:
            problems += kind.validate(component, where)
    strategy = document.get("strategy", "hot")
    services = document.get("services")
    if strategy != "hot" and not services:
        problems.append(f"at strategy: {strategy} needs a `services:` section saying what to stop")
    if services and services["control"] == "command":
        for key in ("stop_command", "start_command"):
            if key not in services:
                problems.append(f"at services: control command needs `{key}`")
    problems += _schedule_errors(document)
    return problems


def _schedule_errors(document: dict) -> list[str]:
    schedule = document.get("schedule") or {}
    problems = []
    if "prune" in schedule and not document.get("retention"):
        problems.append("at schedule.prune: needs a `retention:` section saying what to keep")
    if "copy" in schedule and not document.get("copies"):
        problems.append("at schedule.copy: needs a `copies:` section saying where to")
    for job in JOBS:
        if job in schedule:
            try:
                parse(schedule[job])
            except CronError as error:
                problems.append(
                    f"at schedule.{job}: {schedule[job]!r} is not a cron expression: {error}"
                )
    return problems


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a .env file: KEY=VALUE lines, optional quotes and `export`, '#' comments."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def interpolate(value: Any, environment: dict[str, str], path: str = "") -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; ConfigError for an unset variable."""
    if isinstance(value, dict):
        return {
            key: interpolate(item, environment, f"{path}.{key}" if path else key)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            interpolate(item, environment, f"{path}[{index}]") for index, item in enumerate(value)
        ]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environment:
            return environment[name]
        if default is not None:
            return default
        raise UnsetVariable(f"at {path}: environment variable {name} is not set", file="config")

    return _VARIABLE.sub(replace, value)


@dataclass
class Component:
    """One stateful part of a platform, with secrets resolved."""

    name: str
    type: str
    settings: dict
    password: str | None = field(default=None, repr=False)

    @property
    def critical(self) -> bool:
        return bool(self.settings.get("critical", True)) and not self.settings.get("rebuildable")

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


@dataclass
class Platform:
    """A validated platform file."""

    source: str
    name: str
    repository: str | None
    strategy: str
    services: dict | None
    components: list[Component]
    hooks: dict[str, list[str]]
    tags: list[str]
    hostname: str | None
    retention: dict = field(default_factory=dict)  # the `retention:` section (safehold forget)
    copies: list = field(default_factory=list)  # the `copies:` section (copy after backup)
    drill: dict = field(default_factory=dict)  # the `drill:` section (safehold drill)
    notify: dict = field(repr=False, default_factory=dict)  # `notify:` (ops/notify.py): secrets
    schedule: dict = field(default_factory=dict)  # `schedule:` (ops/schedule.py, safehold daemon)
    document: dict = field(repr=False, default_factory=dict)

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        known = ", ".join(component.name for component in self.components)
        raise ConfigError(f"no component named {name!r} (known: {known})", file=self.source)


def _read_password_file(path: str, source: str, where: str, key: str = "password_file") -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n")
    except OSError as error:
        raise ConfigError(
            f"at {where}.{key}: cannot read {path}: {error.strerror}", file=source
        ) from None


def parse_platform(text: str, source: str, environment: dict[str, str] | None = None) -> Platform:
    """Parse, validate and resolve a platform file's text; ConfigError on any problem."""
    document = load_yaml(text, source)
    problems = validation_errors(document)
    if problems:
        more = (
            f" (and {len(problems) - 1} more: run 'safehold config validate')"
            if len(problems) > 1
            else ""
        )
        raise ConfigError(problems[0] + more, file=source, problems=problems)
    environment = dict(os.environ) if environment is None else environment
    if document.get("env_file"):
        env_path = Path(document["env_file"])
        if not env_path.is_file():
            raise ConfigError(f"at env_file: {env_path} does not exist", file=source)
        environment = {**read_env_file(env_path), **environment}
    try:
        resolved = interpolate(copy.deepcopy(document), environment)
    except UnsetVariable as error:
        raise UnsetVariable(str(error.fields["message"]), file=source) from None
    components = []
    for position, settings in enumerate(resolved["components"]):
        password = settings.pop("password", None)
        if "password_file" in settings:
            password = _read_password_file(
                settings["password_file"], source, f"components[{position}]"
            )
        credentials = settings.get("credentials")
        if isinstance(credentials, dict):  # a secret key is a password: kept out of settings
            password = credentials.pop("secret_key", password)
            if "secret_key_file" in credentials:
                password = _read_password_file(
                    credentials["secret_key_file"],
                    source,
                    f"components[{position}].credentials",
                    "secret_key_file",
                )
        remember(password, *(settings.get("secrets") or {}).values())
        components.append(Component(settings["name"], settings["type"], settings, password))
    if resolved.get("exclude_dumped_data"):
        dumped = sorted({kind_of(c.type).name for c in components if kind_of(c.type).data_markers})
        for component in components:
            if kind_of(component.type).files:
                component.settings.setdefault("exclude_database_data", dumped)
    return Platform(
        source=source,
        name=resolved.get("platform", Path(source).stem),
        repository=resolved.get("repository"),
        strategy=resolved.get("strategy", "hot"),
        services=resolved.get("services"),
        components=components,
        hooks={key: list(value) for key, value in (resolved.get("hooks") or {}).items()},
        tags=list(resolved.get("tags", [])),
        hostname=resolved.get("hostname"),
        retention=dict(resolved.get("retention") or {}),
        copies=[{"to": c} if isinstance(c, str) else dict(c) for c in resolved.get("copies", [])],
        drill=dict(resolved.get("drill") or {}),
        notify=dict(resolved.get("notify") or {}),
        schedule=dict(resolved.get("schedule") or {}),
        document=document,
    )


def load_platform(path: str, environment: dict[str, str] | None = None) -> Platform:
    """Read and parse a platform file; ConfigError if it is missing or invalid."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read it: {error.strerror}", file=path) from None
    return parse_platform(text, path, environment)
