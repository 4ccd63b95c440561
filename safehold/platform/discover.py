"""Proposing a platform file from a docker-compose.yml, so nobody reads volume lists by hand.

What it reads: services, their images, volumes (short and long syntax; bind mounts relative
or absolute, named volumes, anonymous volumes), environment (list or map, env_file), the
top-level ``volumes:`` and ``name:``, and ``.env`` next to the compose file for interpolation.
What it proposes: a files component per service with bind mounts or named volumes, a dump
component per PostgreSQL/MySQL/MariaDB service (recognised by image; their data volumes are
left to the dump), hot+cold with the non-database services stopped. What it cannot handle
(anonymous volumes, MongoDB, Redis, ...) is said plainly in ``notes``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from safehold.platform.config import ConfigError, load_yaml, read_env_file
from safehold.sources import kinds

_INTERPOLATION = re.compile(
    r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))|\$"
)
_SERVICE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
UNHANDLED_IMAGES = {
    "mongo": "MongoDB: add a command component running `mongodump --archive` (restore: "
    "`mongorestore --archive --drop`)",
    "redis": "Redis: its volume is copied as files; for a consistent copy keep it in the cold "
    "phase's stop list or add a command component with `redis-cli --rdb -`",
    "valkey": "Valkey (Redis): its volume is copied as files; for a consistent copy keep it in "
    "the cold phase's stop list or add a command component with `valkey-cli --rdb -`",
    "slapd": "LDAP (slapd): its database is copied as files in the cold phase; `slapcat -n 0` "
    "and `slapcat -n 1` in a command component give a portable dump",
    "openldap": "OpenLDAP: its database is copied as files in the cold phase; `slapcat -n 0` "
    "and `slapcat -n 1` in a command component give a portable dump",
    "elasticsearch": "Elasticsearch: use its snapshot API in a command component, or treat the "
    "index as rebuildable",
    "opensearch": "OpenSearch: use its snapshot API in a command component, or treat the index "
    "as rebuildable",
    "solr": "Solr: its index is copied as files in the cold phase; mark it rebuildable if the "
    "application can reindex",
}
DOCKER_VOLUMES = "/var/lib/docker/volumes"
# Host files and sockets a service mounts to see the host, not data of the platform: never
# proposed (a live restore would move them aside).
HOST_MOUNTS = (
    "/etc/localtime",
    "/etc/timezone",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/machine-id",
    "/usr/share/zoneinfo",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run",
    "/var/run",
    "/proc",
    "/sys",
    "/dev",
    "/lib/modules",
)
# Images whose name contains a database's but that are not one (exporters, proxies, UIs).
NOT_DATABASES = ("*exporter*", "*postgrest*", "*pgadmin*", "*pgbouncer*", "*backup*", "*adminer*")


@dataclass
class Discovery:
    document: dict
    notes: list[str] = field(default_factory=list)


def interpolate(
    text: str, environment: dict[str, str], used: set[str] | None = None, where: str = ""
) -> str:
    """Compose-style interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, $$. Any
    other `$` (such as an installer's unfilled `$<NAME>` placeholder) is an error, as in
    compose."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(0) == "$":
            raise ConfigError(
                f"invalid interpolation in {where or 'a value'}: {text!r} (an unfilled "
                "placeholder? a literal $ is written $$)",
                file="docker-compose.yml",
            )
        name = match.group(1) or match.group(4)
        operator, default = match.group(2), match.group(3) or ""
        if used is not None:
            used.add(name)
        value = environment.get(name)
        if operator == ":-" and not value:
            return default
        if operator == "-" and value is None:
            return default
        if operator in (":?", "?") and not value:
            raise ConfigError(f"variable {name} is required: {default}", file="docker-compose.yml")
        return value or ""

    return _INTERPOLATION.sub(replace, text)


def _walk(value: object, environment: dict[str, str], where: str = "") -> object:
    if isinstance(value, dict):
        return {
            key: _walk(item, environment, f"{where}.{key}" if where else str(key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_walk(item, environment, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, str):
        return interpolate(value, environment, where=where)
    return value


def image_kind(image: str) -> str | None:
    """The source kind whose ``images`` match an image (without tag or digest), else the key
    of UNHANDLED_IMAGES it starts with, else None."""
    name = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    name = name.removeprefix("docker.io/").removeprefix("library/")
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in NOT_DATABASES):
        return None
    for kind in kinds().values():
        if kind.propose and any(fnmatch.fnmatchcase(name, known) for known in kind.images):
            return kind.name
    base = name.split("/")[-1]
    for known in UNHANDLED_IMAGES:
        if base.startswith(known):
            return known
    return None


def _environment(service: dict, base: Path, env: dict[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    env_files = service.get("env_file") or []
    for env_file in [env_files] if isinstance(env_files, (str, dict)) else env_files:
        path = env_file["path"] if isinstance(env_file, dict) else env_file
        values.update(read_env_file(base / path))
    declared = service.get("environment") or {}
    if isinstance(declared, list):
        declared = dict(
            item.split("=", 1) if "=" in item else (item, env.get(item, "")) for item in declared
        )
    values.update({key: "" if value is None else str(value) for key, value in declared.items()})
    return values


def _volumes(service: dict) -> list[dict]:
    """Normalise short and long volume syntax to {type, source, target}."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            result.append(
                {
                    "type": volume.get("type", "volume"),
                    "source": volume.get("source"),
                    "target": volume.get("target"),
                }
            )
            continue
        parts = str(volume).split(":")
        if len(parts) == 1:
            result.append({"type": "volume", "source": None, "target": parts[0]})
            continue
        source, target = parts[0], parts[1]
        is_path = source.startswith(("/", ".", "~"))
        result.append({"type": "bind" if is_path else "volume", "source": source, "target": target})
    return result


def _project_name(compose: dict, directory: Path, env: dict[str, str]) -> str:
    """As compose names it: COMPOSE_PROJECT_NAME (environment or .env), else the top-level
    ``name:``, else the directory's name."""
    name = env.get("COMPOSE_PROJECT_NAME") or compose.get("name") or directory.resolve().name
    return re.sub(r"[^a-z0-9_-]", "", name.lower())


def discover(compose_path: str, environment: dict[str, str] | None = None) -> Discovery:
    """Read a compose file and propose a platform document; ConfigError if it is malformed."""
    path = Path(compose_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read it: {error.strerror}", file=compose_path) from None
    env = {
        **read_env_file(path.parent / ".env"),
        **(os.environ if environment is None else environment),
    }
    raw = load_yaml(text, compose_path)
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        raise ConfigError(
            "no `services:` mapping: is this a docker-compose file?", file=compose_path
        )
    for name in raw["services"]:
        if not _SERVICE_NAME.match(str(name)):
            raise ConfigError(
                f"invalid service name {name!r} (an unfilled placeholder?)", file=compose_path
            )
    compose = _walk(raw, env)
    return _propose(compose, raw, path.parent.resolve(), env)  # type: ignore[arg-type]


def _propose(compose: dict, raw: dict, base: Path, env: dict[str, str]) -> Discovery:
    project = _project_name(compose, base, env)
    owners: dict[str, str] = {}  # path -> the first service proposing it
    top_volumes = compose.get("volumes") or {}
    components: list[dict] = []
    notes: list[str] = []
    stop: list[str] = []
    for name, service in compose["services"].items():
        service = service or {}
        kind = image_kind(str(service.get("image", "")))
        service_env = _environment(service, base, env)
        paths, anonymous = [], []
        for volume in _volumes(service):
            if volume["type"] == "bind":
                source = os.path.expanduser(volume["source"])
                source = str((base / source).resolve()) if not source.startswith("/") else source
                if _host_mount(source):
                    continue
                paths.append(source)
            elif volume["type"] == "volume" and volume["source"]:
                declared = top_volumes.get(volume["source"]) or {}
                volume_name = declared.get("name") or (
                    volume["source"]
                    if declared.get("external")
                    else f"{project}_{volume['source']}"
                )
                paths.append(f"{DOCKER_VOLUMES}/{volume_name}/_data")
            elif volume["type"] == "volume":
                anonymous.append(volume["target"])
        for target in anonymous:
            notes.append(
                f"service {name}: anonymous volume at {target} cannot be located before "
                "the container exists: give it a name in the compose file"
            )
        if kind in kinds():
            proposed = kinds()[kind].propose(name, service_env, raw["services"][name])  # type: ignore[misc]
            notes += [
                f"service {name}: {proposed.pop(key)}"
                for key in sorted(proposed)
                if key.startswith("_note")
            ]
            components.append({"name": _component_name(name), "type": kind, **proposed})
            if paths:
                notes.append(
                    f"service {name}: its volumes ({', '.join(paths)}) are not copied as "
                    + (
                        "files: the database is dumped instead, which is consistent"
                        if kinds()[kind].module is not None
                        else f"files: the {kind} component reads them through the service"
                    )
                )
            continue
        if kind in UNHANDLED_IMAGES:
            notes.append(f"service {name}: {UNHANDLED_IMAGES[kind]}")
        shared = sorted({p for p in paths if p in owners})
        for path in shared:
            notes.append(f"service {name}: {path} is also service {owners[path]}'s: listed once")
        paths = sorted({p for p in paths if p not in owners})
        owners.update({p: name for p in paths})
        if paths:
            components.append({"name": _component_name(name), "type": "files", "paths": paths})
        if paths or shared:
            stop.append(name)
    if not components:
        notes.append("no volumes or databases found: nothing to back up")
    document: dict = {"platform": project, "strategy": "hot+cold" if stop else "hot"}
    if (base / ".env").is_file():
        document["env_file"] = str(base / ".env")
    if stop:
        document["services"] = {"control": "compose", "project_dir": str(base), "stop": stop}
    document["components"] = components
    return Discovery(document, notes)


def _host_mount(path: str) -> bool:
    """True for a host file or directory mounted to see the host (HOST_MOUNTS)."""
    return any(path == mount or path.startswith(mount + "/") for mount in HOST_MOUNTS)


def _component_name(service: str) -> str:
    return re.sub(r"[^a-z0-9_.-]", "-", service.lower()).lstrip("-_.") or "service"


def render(discovery: Discovery, compose_path: str) -> str:
    """The proposal as a commented YAML platform file."""
    lines = [
        f"# safehold platform file proposed by `safehold discover {compose_path}`.",
        "# Review it, set the repository, check that every ${...} variable is set (in env_file",
        "# or the environment), then run",
        "# `safehold config validate` on it.",
    ]
    if discovery.notes:
        lines.append("#\n# What discovery could not settle by itself:")
        lines += [f"#  - {note}" for note in discovery.notes]
    lines.append("repository: /srv/backup/" + discovery.document["platform"])
    body = yaml.safe_dump(discovery.document, sort_keys=False, default_flow_style=False, width=100)
    return "\n".join(lines) + "\n" + body
