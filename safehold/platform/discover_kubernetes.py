"""Proposing a platform file from what a Kubernetes cluster runs.

Input: the objects of ``kubectl get pv,pvc,deploy,statefulset,pod -o json`` (run live, or
read from saved files, JSON or YAML, ``kind: List`` or single objects). Proposed:

- each Deployment/StatefulSet whose image a dumps kind recognises (the same image patterns
  as compose discovery, from the kinds' modules) as a dump component run through
  ``kubectl exec`` in ``deploy/NAME`` or ``statefulset/NAME``, its user and database from the
  container's environment; a password the container gets from a secret (``secretKeyRef``) is
  used inside the pod (``password_env``) and only the secret's name is written down;
- MinIO workloads as bucket components (their endpoint and credentials to fill in), and
  OpenSearch, Redis... named for what they are in the notes;
- each bound host-path or local PersistentVolume as a files component named
  ``<namespace>-<pvc>`` (Kaapana's directories are ``<namespace>-<pvc>-<pv>``), without the
  parts a database workload keeps its live files in (those are dumped); Longhorn and other
  network or block volumes are flagged: a file copy on this host cannot capture them;
- the other workloads mounting those volumes are stopped for the cold pass.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from safehold.platform.config import ConfigError
from safehold.platform.discover import UNHANDLED_IMAGES, Discovery, image_kind
from safehold.platform.sources_bridge import ServiceRunner
from safehold.sources import kinds
from safehold.sources.targets import LocalTarget

WORKLOADS = {"Deployment": "deploy", "StatefulSet": "statefulset"}
LONGHORN = "driver.longhorn.io"


def load_objects(paths: list[str]) -> list[dict]:
    """The objects in saved ``kubectl get ... -o json`` (or ``-o yaml``) files; ConfigError
    for a file that is not one."""
    objects: list[dict] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read it: {error.strerror}", file=path) from None
        try:
            document = json.loads(text)
        except ValueError:
            try:
                document = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ConfigError("neither JSON nor YAML from kubectl", file=path) from None
        objects += _items(document, path)
    return objects


def _items(document: object, source: str) -> list[dict]:
    if not isinstance(document, dict) or "kind" not in document:
        raise ConfigError("not a Kubernetes object or List (kubectl get -o json)", file=source)
    if document["kind"].endswith("List"):
        items = document.get("items") or []
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ConfigError("its `items` are not a list of objects", file=source)
        return items
    return [document]


def kubectl_get_command(kubectl: list[str], namespace: str | None) -> list[str]:
    """The command that lists what discovery reads, live."""
    scope = ["-n", namespace] if namespace else ["-A"]
    return [*kubectl, "get", "pv,pvc,deploy,statefulset,pod", *scope, "-o", "json"]


def parse_live(output: str) -> list[dict]:
    """The objects in kubectl's JSON output; ConfigError if it is not JSON."""
    try:
        return _items(json.loads(output), "kubectl output")
    except ValueError:
        raise ConfigError("kubectl printed something other than JSON") from None


@dataclass
class _Workload:
    kind: str  # deploy or statefulset
    namespace: str
    name: str
    spec: dict  # the pod template's spec
    claim_templates: list[str]

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    def mounts(self) -> list[tuple[str, str, str]]:
        """(claim name or prefix, subPath, container) for each mounted PVC."""
        claims = {
            volume["name"]: volume["persistentVolumeClaim"]["claimName"]
            for volume in self.spec.get("volumes") or []
            if isinstance(volume, dict) and volume.get("persistentVolumeClaim")
        }
        for template in self.claim_templates:  # StatefulSet: <template>-<name>-<ordinal>
            claims.setdefault(template, f"{template}-{self.name}-*")
        result = []
        for container in self.spec.get("containers") or []:
            for mount in container.get("volumeMounts") or []:
                if mount.get("name") in claims:
                    result.append(
                        (claims[mount["name"]], mount.get("subPath", ""), container["name"])
                    )
        return result


def _name(*parts: str) -> str:
    return re.sub(r"[^a-z0-9_.-]", "-", "-".join(parts).lower()).strip("-_.") or "volume"


def _environment(container: dict) -> tuple[dict[str, str], dict[str, str]]:
    """(values, secret references) of a container's env: a value from a secret is a
    non-empty marker in values, and ``secret/key`` in references."""
    values, secrets = {}, {}
    for item in container.get("env") or []:
        name = item.get("name")
        if not name:
            continue
        reference = (item.get("valueFrom") or {}).get("secretKeyRef")
        if reference:
            values[name] = "<from a secret>"
            secrets[name] = f"{reference.get('name')}/{reference.get('key')}"
        else:
            values[name] = str(item.get("value", ""))
    return values, secrets


def propose(
    objects: list[dict], namespace: str | None = None, kubectl_command: str = "kubectl"
) -> Discovery:
    """A platform document for the objects (limited to ``namespace`` if given)."""
    notes: list[str] = []
    workloads = [
        _Workload(
            WORKLOADS[o["kind"]],
            o["metadata"].get("namespace", "default"),
            o["metadata"]["name"],
            ((o.get("spec") or {}).get("template") or {}).get("spec") or {},
            [
                t["metadata"]["name"]
                for t in (o.get("spec") or {}).get("volumeClaimTemplates") or []
                if isinstance(t, dict) and t.get("metadata", {}).get("name")
            ],
        )
        for o in objects
        if o.get("kind") in WORKLOADS and isinstance(o.get("metadata"), dict)
        if namespace is None or o["metadata"].get("namespace", "default") == namespace
    ]
    components: list[dict] = []
    dumped: dict[tuple[str, str], list[str]] = {}  # (namespace, claim pattern) -> subPaths
    services_of: dict[tuple[str, str], list[_Workload]] = {}  # (namespace, claim) -> users
    for workload in workloads:
        where = f"{workload.namespace}/{workload.ref}"
        found = None
        for container in workload.spec.get("containers") or []:
            kind = image_kind(str(container.get("image", "")))
            if kind:
                found = (kind, container)
                break
        if found and found[0] in kinds() and kinds()[found[0]].propose:
            kind, container = found
            values, secrets = _environment(container)
            proposed = dict(kinds()[kind].propose(workload.name, values, {}))  # type: ignore[misc]
            notes += [
                f"{where}: {proposed.pop(key)}" for key in sorted(proposed) if key.startswith("_")
            ]
            component = {"name": _name(workload.namespace, workload.name), "type": kind}
            if kinds()[kind].module is not None:  # a database, dumped in its container
                component["via"] = {
                    "exec": "kubectl",
                    "namespace": workload.namespace,
                    "pod": workload.ref,
                    "container": container["name"],
                }
                proposed.pop("via", None)
                used = [v for k, v in secrets.items() if k == proposed.get("password_env")]
                if used:
                    notes.append(
                        f"{where}: the password is the secret {used[0]} (the container's "
                        f"{proposed['password_env']}): used inside the pod, never copied"
                    )
                for claim, sub_path, _ in workload.mounts():
                    dumped.setdefault((workload.namespace, claim), []).append(sub_path)
            else:
                proposed["endpoint"] = f"http://{workload.name}.{workload.namespace}.svc:9000"
                notes.append(
                    f"{where}: MinIO: set `endpoint` to its Service or ingress as reached from "
                    "where safehold runs, and the credentials"
                    + (f" (secrets: {', '.join(sorted(set(secrets.values())))})" if secrets else "")
                )
                for claim, _, _ in workload.mounts():
                    dumped.setdefault((workload.namespace, claim), []).append("")
            components.append({**component, **proposed})
            continue
        if found and found[0] in UNHANDLED_IMAGES:
            notes.append(f"{where}: {UNHANDLED_IMAGES[found[0]]}")
        for claim, _, _ in workload.mounts():
            services_of.setdefault((workload.namespace, claim), []).append(workload)

    stop: list[_Workload] = []
    for volume in sorted(
        (o for o in objects if o.get("kind") == "PersistentVolume"),
        key=lambda o: str((o.get("spec") or {}).get("claimRef")),
    ):
        spec = volume.get("spec") or {}
        claim = spec.get("claimRef") or {}
        claim_namespace, claim_name = claim.get("namespace", ""), claim.get("name", "")
        if not claim_name or (namespace is not None and claim_namespace != namespace):
            continue
        where = f"{claim_namespace}/{claim_name}"
        path = (spec.get("hostPath") or {}).get("path") or (spec.get("local") or {}).get("path")
        driver = (spec.get("csi") or {}).get("driver", "")
        sub_paths = _matching(dumped, claim_namespace, claim_name)
        users = _matching(services_of, claim_namespace, claim_name)
        if "" in sub_paths or (sub_paths and not users):
            continue  # a database's or object store's own volume: dumped or read through S3
        if not path:
            what = "a Longhorn volume" if driver == LONGHORN else f"a {_volume_type(spec)} volume"
            notes.append(
                f"{where}: {what} ({volume['metadata']['name']}): a file copy on this host "
                "does not capture it; dump what is in it, or use "
                + ("Longhorn's own backups" if driver == LONGHORN else "the storage's own backups")
            )
            continue
        component = {"name": _name(claim_namespace, claim_name), "type": "files", "paths": [path]}
        if sub_paths:
            component["exclude"] = sorted(f"{path}/{sub}" for sub in sub_paths)
        components.append(component)
        for workload in users:
            if workload not in stop:
                stop.append(workload)

    if not components:
        notes.append("no databases or host-path volumes found: nothing to back up")
    document: dict = {"platform": namespace or "kubernetes", "strategy": "hot"}
    if stop:
        home = namespace or Counter(w.namespace for w in stop).most_common(1)[0][0]
        others = [f"{w.namespace}/{w.ref}" for w in stop if w.namespace != home]
        if others:
            notes.append(
                f"not stopped for the cold pass (outside namespace {home}): {', '.join(others)}"
            )
        document["strategy"] = "hot+cold"
        document["services"] = {
            "control": "kubernetes",
            "kubectl_command": kubectl_command,
            "namespace": home,
            "stop": [w.ref.replace("deploy/", "deployment/") for w in stop if w.namespace == home],
        }
    document["components"] = components
    return Discovery(document, notes)


def discover_cluster(
    from_files: list[str], namespace: str | None = None, kubectl_command: str = "kubectl"
) -> Discovery:
    """`safehold discover --kubernetes`: the proposal for the objects in saved files, or, with
    none, for what ``kubectl_command get ...`` lists now (ServiceError if it fails)."""
    if from_files:
        objects = load_objects(from_files)
    else:
        command = kubectl_get_command(shlex.split(kubectl_command), namespace)
        objects = parse_live(ServiceRunner(LocalTarget()).run(command, timeout=120))
    return propose(objects, namespace, kubectl_command)


def _matching(table: dict, namespace: str, claim: str) -> list:
    """The values of table for the claim, whose keys may be StatefulSet claim patterns."""
    result: list = []
    for (key_namespace, pattern), values in table.items():
        if key_namespace != namespace:
            continue
        if pattern == claim or (
            pattern.endswith("-*")
            and claim.startswith(pattern[:-1])
            and claim[len(pattern) - 1 :].isdigit()
        ):
            result += [v for v in values if v not in result]
    return result


def _volume_type(spec: dict) -> str:
    for key in (
        "csi",
        "nfs",
        "iscsi",
        "rbd",
        "cephfs",
        "awsElasticBlockStore",
        "gcePersistentDisk",
    ):
        if spec.get(key):
            return (spec[key].get("driver") if key == "csi" else None) or key
    return "non-host-path"
