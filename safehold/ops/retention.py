"""Retention: which snapshots a policy keeps, and why. Pure: no I/O, no clock.

Snapshots are split into groups (``group_by``, default host, paths and platform) and the
policy is applied to each group on its own. Within a group, newest first:

- ``keep_last N``: the N newest snapshots;
- ``keep_hourly/daily/weekly/monthly/yearly N``: the newest snapshot of each of the N most
  recent hours/days/ISO weeks/months/years that hold a snapshot. Buckets are calendar periods
  in ``tz`` (default: the system's local time zone); if a rule finds fewer than N buckets,
  the group's oldest snapshot is kept as well ("oldest daily"), so a young repository keeps
  its first state until the rule's window fills;
- ``keep_within D``: every snapshot at most D older than the group's newest snapshot (not
  than ``now``: if backups stop, a scheduled forget does not eat the history that is left);
- ``keep_tags``: every snapshot carrying all the tags of one entry (``"a,b"`` needs both).

A snapshot is kept if any rule keeps it; each kept snapshot gets every reason that applies.
Snapshots newer than ``now`` (a host with a clock ahead) are always kept ("future") and take
no part in the other rules. An empty policy is refused, and so is a policy that would remove
every snapshot of a group: forget never deletes everything by accident. docs/retention.md.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from safehold.errors import UsageError

GROUP_FIELDS = ("host", "paths", "platform", "tags", "component")
DEFAULT_GROUP_BY = ("host", "paths", "platform")
BUCKET_RULES = ("hourly", "daily", "weekly", "monthly", "yearly")
COUNT_KEYS = ("keep_last",) + tuple(f"keep_{rule}" for rule in BUCKET_RULES)
POLICY_KEYS = COUNT_KEYS + ("keep_within", "keep_tags")

_DURATION_PART = re.compile(r"(\d+)([hdwmy])")


@dataclass(frozen=True)
class Duration:
    """A calendar duration: ``1y6m`` = one year and six months back, in the buckets' zone."""

    text: str
    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def before(self, moment: float, tz: tzinfo | None) -> float:
        """The epoch time this duration before ``moment`` (month ends are clamped)."""
        local = _local(moment, tz)
        months = local.year * 12 + (local.month - 1) - self.years * 12 - self.months
        year, month = divmod(months, 12)
        if year < 1:
            return float("-inf")
        day = min(local.day, calendar.monthrange(year, month + 1)[1])
        try:
            shifted = local.replace(year=year, month=month + 1, day=day)
            return (shifted - timedelta(days=self.days)).timestamp() - self.hours * 3600
        except (OverflowError, OSError, ValueError):  # before year 1 or the platform's epoch
            return float("-inf")


def parse_duration(text: str) -> Duration:
    """Parse ``12h``, ``10d``, ``2w``, ``6m`` (months), ``1y`` or sums such as ``1y6m``."""
    cleaned = str(text).strip().lower()
    parts = _DURATION_PART.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise UsageError(
            f"invalid duration {text!r}: write a number and a unit, h (hours), d (days), "
            "w (weeks), m (months) or y (years), e.g. 10d, 2w, 6m, 1y6m"
        )
    totals = {unit: 0 for unit in "hdwmy"}
    for number, unit in parts:
        totals[unit] += int(number)
    if not any(totals.values()):
        raise UsageError(f"invalid duration {text!r}: it must be longer than zero")
    return Duration(
        cleaned,
        years=totals["y"],
        months=totals["m"],
        days=totals["d"] + 7 * totals["w"],
        hours=totals["h"],
    )


@dataclass(frozen=True)
class Policy:
    """What to keep. Build with ``Policy.from_mapping`` (validates and parses)."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: Duration | None = None
    keep_tags: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Policy:
        """A policy from a mapping with the keys of POLICY_KEYS; None values are ignored."""
        unknown = sorted(set(values) - set(POLICY_KEYS))
        if unknown:
            raise UsageError(f"unknown retention key(s): {', '.join(unknown)}")
        counts = {}
        for key in COUNT_KEYS:
            value = values.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{key} must be a whole number >= 0, not {value!r}")
            counts[key] = value
        within = values.get("keep_within")
        raw_tags = values.get("keep_tags") or []
        if not isinstance(raw_tags, (list, tuple)) or not all(isinstance(t, str) for t in raw_tags):
            raise UsageError("keep_tags must be a list of tags (an entry 'a,b' needs both)")
        tag_lists: list[tuple[str, ...]] = []
        for entry in raw_tags:
            tags = tuple(sorted({tag.strip() for tag in entry.split(",") if tag.strip()}))
            if not tags:
                raise UsageError("keep_tags: an empty tag would match no snapshot")
            if tags not in tag_lists:
                tag_lists.append(tags)
        return cls(
            **counts,
            keep_within=parse_duration(str(within)) if within not in (None, "") else None,
            keep_tags=tuple(tag_lists),
        )

    def is_empty(self) -> bool:
        """True if the policy keeps nothing (forget refuses it)."""
        return not (
            any(getattr(self, key) for key in COUNT_KEYS) or self.keep_within or self.keep_tags
        )

    def as_dict(self) -> dict:
        """The policy as plain values (JSON output, messages), only the rules that are set."""
        result: dict = {key: getattr(self, key) for key in COUNT_KEYS if getattr(self, key)}
        if self.keep_within:
            result["keep_within"] = self.keep_within.text
        if self.keep_tags:
            result["keep_tags"] = [",".join(tags) for tags in self.keep_tags]
        return result

    def describe(self) -> str:
        """One line: 'keep the last 3, 7 daily, 4 weekly, within 10d, tag nightly'."""
        parts = [f"the last {self.keep_last}"] if self.keep_last else []
        parts += [
            f"{getattr(self, 'keep_' + rule)} {rule}"
            for rule in BUCKET_RULES
            if getattr(self, "keep_" + rule)
        ]
        if self.keep_within:
            parts.append(f"within {self.keep_within.text} of the newest")
        parts += [f"tag {','.join(tags)}" for tags in self.keep_tags]
        return "keep " + ", ".join(parts)


@dataclass
class Group:
    """One group's decision: snapshots oldest first, and the reasons of each kept one."""

    key: dict[str, object]
    keep: list[dict] = field(default_factory=list)
    remove: list[dict] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def describe(self) -> str:
        """'host backup01, paths /srv/a /srv/b, platform klink' (or 'all snapshots')."""
        parts = []
        for name, value in self.key.items():
            shown = " ".join(value) if isinstance(value, list) else value
            parts.append(f"{name} {shown if shown not in (None, '') else '-'}")
        return ", ".join(parts) or "all snapshots"


@dataclass
class Decision:
    """The outcome over all groups."""

    groups: list[Group]

    @property
    def keep(self) -> list[dict]:
        return [snapshot for group in self.groups for snapshot in group.keep]

    @property
    def remove(self) -> list[dict]:
        return [snapshot for group in self.groups for snapshot in group.remove]

    @property
    def reasons(self) -> dict[str, list[str]]:
        return {sid: why for group in self.groups for sid, why in group.reasons.items()}


def parse_group_by(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"host,paths"`` or a list -> a tuple of GROUP_FIELDS; ``""`` means one single group."""
    if value is None:
        return DEFAULT_GROUP_BY
    items = value.split(",") if isinstance(value, str) else list(value)
    fields: list[str] = []
    for item in (str(item).strip() for item in items):
        if not item:
            continue
        if item not in GROUP_FIELDS:
            raise UsageError(
                f"cannot group by {item!r}: choose from {', '.join(GROUP_FIELDS)} "
                "(or '' for a single group)"
            )
        if item not in fields:
            fields.append(item)
    return tuple(fields)


def _group_value(snapshot: dict, name: str) -> object:
    if name == "host":
        return snapshot.get("hostname")
    if name == "paths":
        return sorted(snapshot.get("paths") or [])
    if name == "platform":
        return snapshot.get("platform")
    if name == "tags":
        return sorted(snapshot.get("tags") or [])
    return sorted(c.get("name") for c in snapshot.get("components") or [])


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _local(moment: float, tz: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(moment, tz) if tz is not None else datetime.fromtimestamp(moment)


def bucket(moment: float, rule: str, tz: tzinfo | None = None) -> str:
    """The calendar bucket of an epoch time: '2026-11-20 14:00', '2026-11-20', '2026-W47',
    '2026-11' or '2026' for hourly, daily, weekly (ISO weeks, Monday first), monthly, yearly."""
    local = _local(moment, tz)
    if rule == "hourly":
        return local.strftime("%Y-%m-%d %H:00")
    if rule == "daily":
        return local.strftime("%Y-%m-%d")
    if rule == "weekly":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if rule == "monthly":
        return local.strftime("%Y-%m")
    if rule == "yearly":
        return f"{local.year:04d}"
    raise ValueError(f"unknown bucket rule {rule!r}")


def _reasons(
    newest_first: list[dict], policy: Policy, now: float, tz: tzinfo | None
) -> dict[str, list[str]]:
    """Every snapshot id of one group -> its reasons to be kept (empty: removed)."""
    reasons: dict[str, list[str]] = {snapshot["id"]: [] for snapshot in newest_first}
    current = []
    for snapshot in newest_first:
        if snapshot["time"] > now:
            reasons[snapshot["id"]].append("future")
        else:
            current.append(snapshot)
    for snapshot in current[: policy.keep_last]:
        reasons[snapshot["id"]].append("last")
    for rule in BUCKET_RULES:
        count = getattr(policy, "keep_" + rule)
        if not count or not current:
            continue
        seen: set[str] = set()
        for snapshot in current:
            if len(seen) >= count:
                break
            key = bucket(snapshot["time"], rule, tz)
            if key not in seen:
                seen.add(key)
                reasons[snapshot["id"]].append(f"{rule} {key}")
        oldest = reasons[current[-1]["id"]]
        if len(seen) < count and not any(r.startswith(rule + " ") for r in oldest):
            oldest.append(f"oldest {rule}")
    if policy.keep_within and current:
        bound = policy.keep_within.before(current[0]["time"], tz)
        for snapshot in current:
            if snapshot["time"] < bound:
                break
            reasons[snapshot["id"]].append(f"within {policy.keep_within.text}")
    for tags in policy.keep_tags:
        for snapshot in newest_first:
            if set(tags) <= set(snapshot.get("tags") or []):
                reasons[snapshot["id"]].append(f"tag {','.join(tags)}")
    return reasons


def require_policy(policy: Policy | Mapping[str, object]) -> Policy:
    """The policy (parsed from a mapping if need be); UsageError if it is empty."""
    if not isinstance(policy, Policy):
        policy = Policy.from_mapping(policy)
    if policy.is_empty():
        raise UsageError(
            "empty retention policy: give at least one --keep-* option (or a retention: "
            "section); forget never removes every snapshot"
        )
    return policy


def apply_policy(
    snapshots: Iterable[dict],
    policy: Policy | Mapping[str, object],
    *,
    now: float,
    group_by: str | Iterable[str] | None = DEFAULT_GROUP_BY,
    tz: tzinfo | None = None,
) -> Decision:
    """Decide which snapshots to keep (with reasons) and which to remove, group by group.

    ``snapshots``: dicts with id, time (epoch), hostname, tags, paths, optional platform and
    components. ``now``: the current epoch time (snapshots after it are kept as "future").
    ``group_by``: fields of GROUP_FIELDS (a list or "host,paths"; "" = one group).
    ``tz``: the time zone of the calendar buckets; None = the system's local time.
    Raises UsageError for an empty policy or one that would empty a group.
    """
    policy = require_policy(policy)
    fields = parse_group_by(group_by)
    ordered = sorted(snapshots, key=lambda s: (s["time"], s["id"]))
    members: dict[tuple, list[dict]] = {}
    for snapshot in ordered:
        key = tuple(_hashable(_group_value(snapshot, name)) for name in fields)
        members.setdefault(key, []).append(snapshot)
    groups = []
    for chronological in members.values():
        first = chronological[0]
        group = Group({name: _group_value(first, name) for name in fields})
        reasons = _reasons(chronological[::-1], policy, now, tz)
        for snapshot in chronological:
            why = reasons[snapshot["id"]]
            if why:
                group.keep.append(snapshot)
                group.reasons[snapshot["id"]] = why
            else:
                group.remove.append(snapshot)
        if not group.keep:
            raise UsageError(
                f"refusing: the policy ({policy.describe()}) would remove all "
                f"{len(group.remove)} snapshot(s) of the group {group.describe()}; "
                "add a --keep-last or narrow the selection with --host/--tag"
            )
        groups.append(group)
    return Decision(groups)
