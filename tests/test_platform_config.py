"""Platform files: validation messages name the place, secrets, presets, the generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehold.platform.config import ConfigError, parse_platform, validation_errors
from safehold.platform.docs import config_reference
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
BASE = """
platform: klink
strategy: hot+cold
services: {control: compose, project_dir: /opt/k-link, stop: [kbox]}
components:
  - name: database
    type: mysql
    via: {exec: compose, service: database}
    databases: [dms]
    password: ${DB_PW}
  - name: storage
    type: files
    paths: [/opt/k-link/storage/data]
"""


def _error(text: str, environment: dict | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_platform(text, "platform.yaml", environment or {"DB_PW": "x"})
    return str(caught.value)


def test_a_valid_file_resolves_secrets_from_the_environment():
    platform = parse_platform(BASE, "platform.yaml", {"DB_PW": "s3cret"})
    database = platform.component("database")
    assert database.password == "s3cret"
    assert "s3cret" not in repr(database)  # never in logs through repr
    assert platform.strategy == "hot+cold" and platform.name == "klink"


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ("databases: [dms]", "databases: dms"),
            "at components[0].databases: expected a list of names",
        ),
        (
            ("type: files", "type: filez"),
            "at components[1].type: expected one of: bucket, command, files",
        ),
        (
            ("databases: [dms]", "databases: [dms]\n    paths: [/srv]"),
            "at components[0].paths: unknown key for a mysql component",
        ),
        (
            ("databases: [dms]", "databases: [dms]\n    port: x"),
            "at components[0].port: expected an integer",
        ),
        (
            ("    paths: [/opt/k-link/storage/data]\n", ""),
            "at components[1]: missing required key 'paths'",
        ),
        (
            ("platform: klink", "platform: klink\ncolour: blue"),
            "at the top level: unknown key 'colour'",
        ),
        (("service: database}", "servce: database}"), "at components[0].via"),
        (("name: storage", "name: database"), "'database' is already used by components[0]"),
        (("password: ${DB_PW}", "password: hunter2"), "a password in the file itself is refused"),
        (("/opt/k-link/storage/data]", "storage/data]"), "is not an absolute path"),
        (
            (
                "strategy: hot+cold\n"
                "services: {control: compose, project_dir: /opt/k-link, stop: [kbox]}",
                "strategy: cold",
            ),
            "cold needs a `services:` section",
        ),
    ],
)
def test_errors_name_the_place_and_the_problem(change, message):
    assert message in _error(BASE.replace(*change))


def test_unset_variable_and_duplicate_key_and_bad_yaml():
    assert "environment variable DB_PW is not set" in _error(BASE, {"OTHER": "1"})
    assert "duplicated key 'components'" in _error(BASE + "components: []\n")
    assert "line" in _error("components: [\n")


def test_env_file_supplies_variables(tmp_path: Path):
    env = tmp_path / ".env"
    env.write_text("# secrets\nexport DB_PW='from-file'\n")
    platform = parse_platform(f"env_file: {env}\n" + BASE, "p.yaml", {})
    assert platform.component("database").password == "from-file"
    overridden = parse_platform(f"env_file: {env}\n" + BASE, "p.yaml", {"DB_PW": "from-env"})
    assert overridden.component("database").password == "from-env"


def test_password_file(tmp_path: Path):
    secret = tmp_path / "pw"
    secret.write_text("file-secret\nignored\n")
    text = BASE.replace("password: ${DB_PW}", f"password_file: {secret}")
    assert parse_platform(text, "p.yaml", {}).component("database").password == "file-secret"
    assert "cannot read" in _error(BASE.replace("password: ${DB_PW}", "password_file: /nope"))


@pytest.mark.parametrize("preset", ["kaapana", "klink", "ovena", "chipster"])
def test_presets_are_written_and_validate(preset, tmp_path: Path):
    output = tmp_path / f"{preset}.yaml"
    assert run_cli("config", "new", "--preset", preset, "-o", output).code == 0
    text = output.read_text()
    assert text.startswith("#")  # commented for the reader
    result = run_cli("config", "validate", output)
    assert result.code == 0, result.err
    assert "valid" in result.out
    again = run_cli("config", "new", "--preset", preset, "-o", output)
    assert again.code == 2 and "refusing to overwrite" in again.err


def test_validate_lists_every_problem(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("components:\n  - name: a\n    type: files\n  - name: B\n    type: sqlite\n")
    result = run_cli("config", "validate", path)
    assert result.code == 21
    assert "components[0]: missing required key 'paths'" in result.err
    assert "components[1].name" in result.err


def test_schema_command_prints_json_schema():
    import json

    result = run_cli("config", "schema")
    assert json.loads(result.out)["title"] == "safehold platform file"


def test_docs_config_md_is_generated_from_the_schema():
    assert (ROOT / "docs" / "config.md").read_text() == config_reference(), (
        "docs/config.md is stale: run `safehold config docs > docs/config.md`"
    )


def test_every_schema_property_is_documented():
    from safehold.platform.schema import SCHEMA

    def walk(schema: dict, where: str) -> list[str]:
        missing = []
        for key, value in schema.get("properties", {}).items():
            if "description" not in value:
                missing.append(f"{where}.{key}")
            missing += walk(value, f"{where}.{key}")
            missing += walk(value.get("items", {}), f"{where}.{key}[]")
            for option in value.get("oneOf", []):
                missing += walk(option, f"{where}.{key}")
        return missing

    assert walk(SCHEMA, "") == []


def test_validation_errors_of_a_non_mapping():
    assert validation_errors(["a"]) == ["at the top level: expected a mapping"]


def test_password_env_excludes_other_passwords_and_kubectl_takes_a_selector():
    component = (
        "components:\n  - name: db\n    type: postgres\n    databases: [d]\n"
        "    via: {exec: kubectl, selector: app=postgres}\n    password_env: POSTGRES_PASSWORD\n"
    )
    assert parse_platform(component, "p.yaml", {}).component("db").get("password_env")
    both = component + "    password: ${X}\n"
    assert "so password must go" in _error(both)
    pod_too = component.replace("selector: app=postgres", "selector: a=b, pod: p")
    assert "pod or selector, not both" in _error(pod_too)
