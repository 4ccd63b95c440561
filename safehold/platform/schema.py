"""The platform file's JSON Schema: the single source of truth.

Validation (config.py), the reference in docs/config.md (``safehold config docs``) and
``safehold config schema`` all come from this one dictionary. Every property has a
description; keep them short and concrete.
"""

from __future__ import annotations

from typing import Any

from safehold.sources import Kind, kinds, type_names

VIA = {
    "description": "How to reach the component: where its commands run.",
    "oneOf": [
        {
            "type": "string",
            "description": "`local`, or `ssh://user@host[:port]`",
            "pattern": "^(local|ssh://.+)$",
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["exec"],
            "properties": {
                "exec": {
                    "type": "string",
                    "pattern": "^(local|ssh|compose|docker|kubectl|ssh://.+)$",
                    "description": "`local`, `ssh`, `ssh://user@host[:port]`, `compose`, "
                    "`docker` or `kubectl`",
                },
                "host": {"type": "string", "description": "ssh: host name"},
                "user": {"type": "string", "description": "ssh: user"},
                "port": {"type": "integer", "description": "ssh: port (default 22)"},
                "identity": {"type": "string", "description": "ssh: private key file"},
                "known_hosts": {"type": "string", "description": "ssh: known_hosts file"},
                "strict_host_key_checking": {
                    "type": "string",
                    "description": "ssh: yes, accept-new or no",
                },
                "connect_timeout": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "ssh: seconds to wait for a connection",
                },
                "options": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "ssh: extra `-o` options, e.g. `ControlPath=...`",
                },
                "service": {"type": "string", "description": "compose: service name"},
                "project_dir": {
                    "type": "string",
                    "description": "compose: project directory (default: services.project_dir)",
                },
                "file": {"type": "string", "description": "compose: compose file"},
                "container": {
                    "type": "string",
                    "description": "docker: container name; kubectl: container in the pod",
                },
                "namespace": {"type": "string", "description": "kubectl: namespace"},
                "pod": {
                    "type": "string",
                    "description": "kubectl: pod name, or `deploy/NAME`, `statefulset/NAME`",
                },
                "selector": {
                    "type": "string",
                    "description": "kubectl: label selector (`app=postgres`) instead of pod: "
                    "its first running pod",
                },
                "command": {
                    "type": "string",
                    "description": "compose: `docker compose`, `docker-compose` or `podman "
                    "compose` (default: services.compose_command); kubectl: how kubectl is run "
                    "(default: services.kubectl_command)",
                },
                "context": {"type": "string", "description": "kubectl: context"},
            },
        },
    ],
}

# The keys every component takes, whatever its kind; each kind adds its own
# (safehold/sources/<kind>.py, ``KIND.properties``).
COMMON_COMPONENT_FIELDS = {
    "name": {
        "type": "string",
        "pattern": "^[a-z0-9][a-z0-9_.-]*$",
        "description": "unique name (lowercase letters, digits, `_ . -`)",
    },
    "via": VIA,
    "critical": {
        "type": "boolean",
        "default": True,
        "description": "a failure of this component fails the whole backup",
    },
    "stopped_with_services": {
        "type": "boolean",
        "default": False,
        "description": "the cold phase stops this component's own "
        "server (with `command` or `systemd` control): "
        "dump it before the stop",
    },
    "rebuildable": {
        "type": "boolean",
        "default": False,
        "description": "can be rebuilt (e.g. a search index): restored last, failures are warnings",
    },
}


def _type_field() -> dict:
    return {"enum": sorted(type_names()), "description": "what kind of state this is"}


def kind_schema(kind: Kind) -> dict:
    """The schema of a component of one kind: the common keys and the kind's own."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "type", *kind.required],
        "description": f"`type: {kind.name}`: {kind.description}",
        "properties": {
            "name": COMMON_COMPONENT_FIELDS["name"],
            "type": {"enum": [kind.name, *kind.aliases], "description": kind.description},
            **{key: value for key, value in COMMON_COMPONENT_FIELDS.items() if key != "name"},
            **kind.properties,
        },
    }


def component_schema() -> dict:
    """The schema of a component, built from the source kinds' registry: ``type`` chooses
    the kind, and the kind's schema (``kind_schema``) checks every other key."""
    return {
        "type": "object",
        "required": ["name", "type"],
        "description": "One stateful part of the platform; the keys beyond the common ones "
        "depend on `type`.",
        "properties": {"name": COMMON_COMPONENT_FIELDS["name"], "type": _type_field()},
        "allOf": [
            {
                "if": {
                    "properties": {"type": {"enum": [kind.name, *kind.aliases]}},
                    "required": ["type"],
                },
                "then": kind_schema(kind),
            }
            for kind in kinds().values()
        ],
    }


SERVICES = {
    "type": "object",
    "additionalProperties": False,
    "required": ["control"],
    "description": "What the cold phase stops, and how.",
    "properties": {
        "control": {
            "enum": ["compose", "kubernetes", "systemd", "command"],
            "description": "how services are stopped and started",
        },
        "via": VIA,
        "project_dir": {"type": "string", "description": "compose: the project directory"},
        "file": {"type": "string", "description": "compose: compose file"},
        "compose_command": {
            "type": "string",
            "default": "auto",
            "description": "compose: `docker compose` (the plugin), `docker-compose` (the "
            "standalone binary), `podman compose`, or `auto`: the first of them that works",
        },
        "kubectl_command": {
            "type": "string",
            "default": "kubectl",
            "description": "kubernetes: how kubectl is run here: `kubectl`, `microk8s.kubectl`, "
            "`k3s kubectl`",
        },
        "namespace": {"type": "string", "description": "kubernetes: namespace"},
        "context": {"type": "string", "description": "kubernetes: kubectl context"},
        "stop": {
            "type": "array",
            "items": {"type": "string"},
            "description": "services (compose), `deployment/x` or `statefulset/x` "
            "(kubernetes), units (systemd), stopped in this order and "
            "started in reverse",
        },
        "stop_command": {"type": "string", "description": "command: shell command that stops"},
        "start_command": {"type": "string", "description": "command: shell command that starts"},
        "timeout": {
            "type": "integer",
            "minimum": 1,
            "default": 300,
            "description": "seconds to wait for a stop or start command",
        },
    },
}

HOOKS = {
    "type": "object",
    "additionalProperties": False,
    "description": "Shell commands run on this host at fixed points.",
    "properties": {
        name: {
            "type": "array",
            "items": {"type": "string"},
            "description": f"run {name.replace('_', ' ')}",
        }
        for name in ("before_backup", "after_backup", "before_restore", "after_restore")
    },
}

# retention: the policy of `safehold forget --config` (safehold/ops/retention.py, docs/retention.md)
RETENTION = {
    "type": "object",
    "additionalProperties": False,
    "description": "What `safehold forget --config` keeps (its --keep-* options override "
    "single keys): keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, "
    "keep_yearly (numbers), keep_within (`12h`, `10d`, `2w`, `6m`, `1y`), keep_tags (list; "
    "`a,b` needs both), group_by (list of host, paths, platform, tags, component); "
    "see docs/retention.md.",
    "properties": {
        **{
            f"keep_{unit}": {
                "type": "integer",
                "minimum": 0,
                "description": f"keep N {unit} snapshots",
            }
            for unit in ("last", "hourly", "daily", "weekly", "monthly", "yearly")
        },
        "keep_within": {
            "type": "string",
            "pattern": "^([0-9]+[hdwmy])+$",
            "description": "keep all snapshots this much older than the newest one",
        },
        "keep_tags": {
            "type": "array",
            "items": {"type": "string"},
            "description": "keep snapshots carrying all the tags of one entry",
        },
        "group_by": {
            "type": "array",
            "items": {"enum": ["host", "paths", "platform", "tags", "component"]},
            "description": "apply the policy per group (default: host, paths, platform)",
        },
    },
}

# drill: what `safehold drill --config` checks (safehold/ops/drill.py, docs/operations.md)
DRILL_CHECK = {
    "type": "object",
    "additionalProperties": False,
    "required": ["component", "sql"],
    "properties": {
        "name": {"type": "string", "description": "label in the drill result (default: the SQL)"},
        "component": {"type": "string", "description": "a postgres, mysql or sqlite component"},
        "database": {
            "type": "string",
            "description": "database as backed up (sqlite: the file or its base name); "
            "default: the component's only one",
        },
        "sql": {"type": "string", "description": "query run on the restored copy, never live"},
        "expect": {
            "anyOf": [{"type": "string"}, {"type": "number"}],
            "description": "first value of the first row: `42`, `text`, or a quoted comparison "
            "such as `'>= 1'`; without it the query only has to succeed",
        },
    },
}

DRILL = {
    "type": "object",
    "additionalProperties": False,
    "description": "What `safehold drill --config` does beyond restoring everything into "
    "scratch space and comparing row counts: scratch (directory, default the system temp "
    "dir), throwaway_servers (default true: start PostgreSQL/MariaDB here when installed; "
    "false: scratch databases `<name>_safehold_drill` on the configured servers), checks "
    "(list of {component, database, sql, expect, name}); see docs/operations.md.",
    "properties": {
        "scratch": {
            "type": "string",
            "description": "directory below which the drill restores (--scratch overrides)",
        },
        "throwaway_servers": {
            "type": "boolean",
            "default": True,
            "description": "restore dumps into servers started here when their programs are "
            "installed; false: into scratch databases on the configured servers",
        },
        "checks": {
            "type": "array",
            "items": DRILL_CHECK,
            "description": "SQL run on the restored databases, with the expected answer",
        },
    },
}

COPIES = {
    "type": "array",
    "description": "off-site copies: after each backup its snapshot is copied to each of these "
    "repositories (only missing chunks travel; each has its own key)",
    "items": {
        "oneOf": [
            {
                "type": "string",
                "description": "a repository location; its passphrase from $SAFEHOLD_TO_PASSPHRASE",
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["to"],
                "properties": {
                    "to": {"type": "string", "description": "the target repository location"},
                    "passphrase_env": {
                        "type": "string",
                        "description": "environment variable with its passphrase",
                    },
                    "passphrase_file": {
                        "type": "string",
                        "description": "file whose first line is its passphrase",
                    },
                },
            },
        ]
    },
}

# notify: where `backup --config` and `drill` report (safehold/ops/notify.py, docs/operations.md)
_NOTIFY_WHEN = {
    "on": {
        "type": "array",
        "items": {"enum": ["failure", "success"]},
        "description": "override `notify.on` for this channel",
    },
    "events": {
        "type": "array",
        "items": {"enum": ["backup", "drill", "check", "prune", "copy"]},
        "description": "what this channel hears about (default all; healthchecks: backup); "
        "check, prune and copy come from scheduled jobs",
    },
}


def _http_channel(description: str, **extra: Any) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["url"],
        "description": description,
        "properties": {
            "url": {"type": "string", "description": "http(s) URL (may be `${VAR}`)"},
            **extra,
            **_NOTIFY_WHEN,
        },
    }


NOTIFY = {
    "type": "object",
    "additionalProperties": False,
    "description": "Notifications after each platform backup and drill: on (`[failure]` "
    "or `[failure, success]`), and channels webhook, ntfy, healthchecks, email; a "
    "notification that fails never changes the result; see docs/operations.md.",
    "properties": {
        "on": {
            "type": "array",
            "items": {"enum": ["failure", "success"]},
            "default": ["failure"],
            "description": "when to notify: `failure` (failed or partial), `success`",
        },
        "webhook": _http_channel("POST a JSON document to this URL"),
        "ntfy": _http_channel(
            "POST the summary line to an ntfy topic URL",
            token={"type": "string", "description": "access token, as `${VAR}`"},
        ),
        "healthchecks": _http_channel(
            "ping a healthchecks.io-style URL (URL/fail on failure; by default on "
            "success too, for backups only)"
        ),
        "email": {
            "type": "object",
            "additionalProperties": False,
            "required": ["host", "from", "to"],
            "description": "send a mail through an SMTP server",
            "properties": {
                "host": {"type": "string", "description": "SMTP server"},
                "port": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 65535,
                    "description": "SMTP port (default 587 with starttls, else 25)",
                },
                "from": {"type": "string", "description": "sender address"},
                "to": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "description": "recipient addresses",
                },
                "starttls": {
                    "type": "boolean",
                    "default": False,
                    "description": "upgrade the connection with STARTTLS (certificate checked)",
                },
                "user": {"type": "string", "description": "SMTP login (may be `${VAR}`)"},
                "password": {
                    "type": "string",
                    "pattern": "^\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}$",
                    "description": "password: only as `${VAR}` (from the environment); "
                    "never literal",
                },
                "password_file": {
                    "type": "string",
                    "description": "file whose first line is the password",
                },
                **_NOTIFY_WHEN,
            },
        },
    },
}


# schedule: when `safehold daemon` (or the units of `safehold schedule install`) runs each job
# (safehold/ops/schedule.py, safehold/ops/cron.py, docs/operations.md)
JOBS = ("backup", "copy", "prune", "check", "drill")  # in the order they run when due together


def _job(what: str) -> dict:
    return {
        "type": "string",
        "description": f"cron expression (5 fields, or @hourly/@daily/@weekly...) for {what}",
    }


SCHEDULE = {
    "type": "object",
    "additionalProperties": False,
    "description": "When `safehold daemon` runs each job (cron expressions in local time: "
    "`30 2 * * *`, `*/15 * * * *`, `@daily`; a job without one does not run), with a "
    "random `jitter`; `safehold schedule install` writes the same as systemd timers or "
    "crontab lines; see docs/operations.md.",
    "properties": {
        "backup": _job("the platform backup (with its `copies:`)"),
        "copy": _job("copying snapshots missing in the `copies:` repositories"),
        "prune": _job("forget by `retention:`, then prune"),
        "check": _job("`check` of the repository"),
        "check_read_data_subset": {
            "type": "string",
            "pattern": "^([0-9]+(\\.[0-9]+)?%|[0-9]+/[0-9]+)$",
            "description": "the check also reads this part of the data: `5%` or `n/t`",
        },
        "drill": _job("a restore drill of the latest snapshot"),
        "jitter": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "seconds: each run starts after a random delay up to this",
        },
    },
}


def platform_schema() -> dict[str, Any]:
    """The whole platform file's schema, with the component schema of the kinds known now."""
    return {**_PLATFORM, "properties": {**_PLATFORM["properties"], "components": _components()}}


def _components() -> dict:
    return {
        "type": "array",
        "items": component_schema(),
        "minItems": 1,
        "description": "the stateful parts of the platform",
    }


def __getattr__(name: str) -> Any:
    # SCHEMA and COMPONENT are built on use: a kind registered later is in them.
    if name == "SCHEMA":
        return platform_schema()
    if name == "COMPONENT":
        return component_schema()
    raise AttributeError(name)


_PLATFORM: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "safehold platform file",
    "type": "object",
    "additionalProperties": False,
    "required": ["components"],
    "properties": {
        "repository": {
            "type": "string",
            "description": "where backups go: a path or file:// URL "
            "(sftp:// and s3:// follow); --repo overrides it, and "
            "$SAFEHOLD_REPO is used only when this is absent",
        },
        "platform": {"type": "string", "description": "free text, recorded in snapshots"},
        "hostname": {"type": "string", "description": "host name recorded in snapshots"},
        "env_file": {
            "type": "string",
            "description": "file of KEY=VALUE lines for `${VAR}` (e.g. the compose "
            "project's .env); the environment takes precedence",
        },
        "exclude_dumped_data": {
            "type": "boolean",
            "default": False,
            "description": "leave the live data directories of the database servers this file "
            "dumps (postgres, mysql) out of every files component: such a directory below a "
            "files path is kept empty (it is recognised by its files, e.g. PG_VERSION)",
        },
        "strategy": {
            "enum": ["hot", "cold", "hot+cold"],
            "default": "hot",
            "description": "hot: everything while running; cold: stop, copy, start; "
            "hot+cold: copy while running, stop, copy the changes, start",
        },
        "services": SERVICES,
        "components": {},  # platform_schema() puts component_schema() here
        "hooks": HOOKS,
        "tags": {
            "type": "array",
            "items": {"type": "string"},
            "description": "tags added to every snapshot",
        },
        "retention": RETENTION,
        "copies": COPIES,
        "drill": DRILL,
        "notify": NOTIFY,
        "schedule": SCHEDULE,
    },
}
