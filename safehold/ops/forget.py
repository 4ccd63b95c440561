"""Forget: apply a retention policy to a repository and delete the snapshot objects it drops.

Only ``snapshots/<id>`` objects are deleted; the data they referenced stays in the repository
until prune (not written yet) removes what no snapshot needs. The decision is taken and
carried out under an exclusive lock, so no backup, restore or check runs meanwhile and the
snapshot list cannot change between deciding and deleting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo

from safehold.errors import SafeholdError, StorageError
from safehold.ops.retention import DEFAULT_GROUP_BY, Decision, Policy, apply_policy
from safehold.repo.repository import Repository
from safehold.repo.snapshots import list_snapshots
from safehold.store import ObjectMissing


@dataclass
class ForgetResult:
    """What forget decided, and the ids it actually deleted (none on a dry run)."""

    decision: Decision
    dry_run: bool
    removed: list[str] = field(default_factory=list)


def select_snapshots(
    repository: Repository,
    *,
    host: str | None = None,
    tags: list[str] | None = None,
    platform: str | None = None,
) -> list[dict]:
    """The snapshots forget considers: all of them, or those of a host, with all the given
    tags (as ``safehold snapshots --tag``), or of one platform."""
    found = list_snapshots(repository, host=host, tags=tags or None)
    if platform is not None:
        found = [snapshot for snapshot in found if snapshot.get("platform") == platform]
    return found


def forget(
    repository: Repository,
    policy: Policy | Mapping[str, object],
    *,
    now: float,
    group_by: str | Iterable[str] | None = DEFAULT_GROUP_BY,
    host: str | None = None,
    tags: list[str] | None = None,
    platform: str | None = None,
    tz: tzinfo | None = None,
    dry_run: bool = False,
    wait: float = 0.0,
    before_delete: Callable[[Decision], None] | None = None,
) -> ForgetResult:
    """Decide with ``apply_policy`` and, unless ``dry_run``, delete the removed snapshots.

    Deleting happens under an exclusive lock (RepositoryLocked, exit 14, if a backup or
    restore holds the repository for longer than ``wait`` seconds). ``before_delete`` is
    called with the decision just before the first deletion (the command line prints it).
    """
    selection = {"host": host, "tags": tags, "platform": platform}
    if dry_run:
        decision = apply_policy(
            select_snapshots(repository, **selection), policy, now=now, group_by=group_by, tz=tz
        )
        return ForgetResult(decision, dry_run=True)
    repository.require_delete("forget")  # no-delete mode: exit 26, nothing changed
    with repository.lock(exclusive=True, wait=wait, operation="forget"):
        decision = apply_policy(
            select_snapshots(repository, **selection), policy, now=now, group_by=group_by, tz=tz
        )
        if before_delete is not None:
            before_delete(decision)
        result = ForgetResult(decision, dry_run=False)
        for snapshot in decision.remove:
            try:
                repository.delete_snapshot(snapshot["id"])
            except ObjectMissing:
                pass  # already gone: the outcome is the same
            except SafeholdError as error:
                detail = str(error).removeprefix("storage error: ")
                raise StorageError(
                    f"{detail}; {len(result.removed)} of {len(decision.remove)} snapshot(s) "
                    "were removed before this, the others are unchanged"
                ) from error
            result.removed.append(snapshot["id"])
    return result
