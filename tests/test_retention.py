"""safehold.ops.retention: the pure retention decision, table by table, plus properties.

Every case uses a fixed ``now`` and UTC buckets (``tz=UTC``) unless it tests time zones.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safehold.errors import UsageError
from safehold.ops.retention import (
    COUNT_KEYS,
    Decision,
    Policy,
    apply_policy,
    bucket,
    parse_duration,
    parse_group_by,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()  # a Friday, ISO week 47


def at(text: str) -> float:
    """'2026-11-20 10:00[:ss]' in UTC -> epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def snap(sid: str, when: str | float, **fields: object) -> dict:
    snapshot = {
        "id": sid,
        "time": at(when) if isinstance(when, str) else when,
        "hostname": "host1",
        "tags": [],
        "paths": ["/srv"],
    }
    snapshot.update(fields)
    return snapshot


def decide(snapshots: list[dict], group_by: object = None, tz=UTC, **policy: object) -> Decision:
    kwargs = {} if group_by is None else {"group_by": group_by}
    return apply_policy(snapshots, policy, now=NOW, tz=tz, **kwargs)


def kept(snapshots: list[dict], **policy: object) -> list[str]:
    return sorted(s["id"] for s in decide(snapshots, **policy).keep)


DAILY_WEEK = [snap(f"d{day:02d}", f"2026-11-{day:02d} 03:00") for day in range(1, 21)]


# ------------------------------------------------------------------ single rules, tables


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"keep_last": 1}, ["d20"]),
        ({"keep_last": 3}, ["d18", "d19", "d20"]),
        ({"keep_last": 50}, [f"d{day:02d}" for day in range(1, 21)]),
        ({"keep_daily": 2}, ["d19", "d20"]),
        ({"keep_hourly": 2}, ["d19", "d20"]),
        # weeks 45 (Nov 2-8), 46 (9-15), 47 (16-22): the Sundays and the newest
        ({"keep_weekly": 3}, ["d08", "d15", "d20"]),
        # only two weeks requested: the third bucket (week 45) is not used
        ({"keep_weekly": 2}, ["d15", "d20"]),
        # week 44 holds Nov 1 (a Sunday): four buckets exist
        ({"keep_weekly": 4}, ["d01", "d08", "d15", "d20"]),
        # one month only: the rule wants 2, so the oldest is kept too
        ({"keep_monthly": 2}, ["d01", "d20"]),
        ({"keep_yearly": 1}, ["d20"]),
        ({"keep_within": "3d"}, ["d17", "d18", "d19", "d20"]),
        ({"keep_within": "1w"}, [f"d{day:02d}" for day in range(13, 21)]),
        ({"keep_within": "12h"}, ["d20"]),
    ],
)
def test_single_rules(policy: dict, expected: list[str]) -> None:
    assert kept(DAILY_WEEK, **policy) == expected


def test_restic_documentation_example_twelve_sundays_keep_daily_four() -> None:
    sundays = [
        snap(f"s{n:02d}", datetime(2019, 9, 1, 11, tzinfo=UTC).timestamp() + n * 7 * 86400)
        for n in range(12)
    ]
    assert kept(sundays, keep_daily=4) == ["s08", "s09", "s10", "s11"]


def test_newest_snapshot_of_each_bucket_counts() -> None:
    snapshots = [
        snap("early", "2026-11-20 01:00"),
        snap("late", "2026-11-20 11:00"),
        snap("yesterday-early", "2026-11-19 01:00"),
        snap("yesterday-late", "2026-11-19 23:00"),
    ]
    decision = decide(snapshots, keep_daily=2)
    assert sorted(s["id"] for s in decision.keep) == ["late", "yesterday-late"]
    assert decision.reasons["late"] == ["daily 2026-11-20"]
    assert decision.reasons["yesterday-late"] == ["daily 2026-11-19"]


@pytest.mark.parametrize(
    ("rule", "older", "newer"),
    [
        ("hourly", "2026-11-20 10:59:59", "2026-11-20 11:00:00"),
        ("daily", "2026-11-19 23:59:59", "2026-11-20 00:00:00"),
        ("weekly", "2026-11-15 23:59:59", "2026-11-16 00:00:00"),  # Sunday -> Monday
        ("monthly", "2026-10-31 23:59:59", "2026-11-01 00:00:00"),
        ("yearly", "2025-12-31 23:59:59", "2026-01-01 00:00:00"),
    ],
)
def test_bucket_boundaries_split_one_second_apart(rule: str, older: str, newer: str) -> None:
    snapshots = [snap("older", older), snap("newer", newer)]
    assert kept(snapshots, **{f"keep_{rule}": 2}) == ["newer", "older"]
    assert kept(snapshots, **{f"keep_{rule}": 1}) == ["newer"]


@pytest.mark.parametrize(
    ("rule", "first", "second"),
    [
        ("hourly", "2026-11-20 10:00:00", "2026-11-20 10:59:59"),
        ("daily", "2026-11-20 00:00:00", "2026-11-20 11:59:59"),
        ("weekly", "2026-11-16 00:00:00", "2026-11-20 11:00:00"),  # Monday .. Friday
        ("monthly", "2026-11-01 00:00:00", "2026-11-20 11:00:00"),
        ("yearly", "2026-01-01 00:00:00", "2026-11-20 11:00:00"),
    ],
)
def test_same_bucket_keeps_only_the_newest(rule: str, first: str, second: str) -> None:
    assert kept([snap("a", first), snap("b", second)], **{f"keep_{rule}": 1}) == ["b"]
    # asking for more buckets than exist also keeps the oldest
    assert kept([snap("a", first), snap("b", second)], **{f"keep_{rule}": 5}) == ["a", "b"]


@pytest.mark.parametrize(
    ("rule", "moment", "key"),
    [
        ("hourly", "2026-11-20 14:30", "2026-11-20 14:00"),
        ("daily", "2026-11-20 14:30", "2026-11-20"),
        ("weekly", "2026-11-20 14:30", "2026-W47"),
        ("weekly", "2027-01-01 10:00", "2026-W53"),  # ISO week year, not the calendar year
        ("weekly", "2027-01-04 00:00", "2027-W01"),
        ("monthly", "2026-11-20 14:30", "2026-11"),
        ("yearly", "2026-11-20 14:30", "2026"),
    ],
)
def test_bucket_names(rule: str, moment: str, key: str) -> None:
    assert bucket(at(moment), rule, UTC) == key


def test_weekly_across_new_year_is_one_iso_week() -> None:
    snapshots = [snap("thu", "2020-12-31 10:00"), snap("sun", "2021-01-03 10:00")]
    assert kept(snapshots, keep_weekly=1) == ["sun"]


def test_buckets_follow_the_time_zone() -> None:
    # 22:30 UTC on the 19th is 00:30 on the 20th in Helsinki (UTC+2 in November)
    snapshots = [snap("a", "2026-11-19 21:00"), snap("b", "2026-11-19 22:30")]
    assert sorted(s["id"] for s in decide(snapshots, keep_daily=1).keep) == ["b"]
    helsinki = decide(snapshots, tz=ZoneInfo("Europe/Helsinki"), keep_daily=2)
    assert helsinki.reasons == {"a": ["daily 2026-11-19"], "b": ["daily 2026-11-20"]}
    fixed = decide(snapshots, tz=timezone(timedelta(hours=2)), keep_daily=2)
    assert len(fixed.keep) == 2


def test_buckets_and_durations_are_wall_clock_across_daylight_saving_time() -> None:
    helsinki = ZoneInfo("Europe/Helsinki")  # 2026-10-25 04:00 EEST -> 03:00 EET
    first, second = at("2026-10-25 00:30"), at("2026-10-25 01:30")  # both 03:30 local
    assert bucket(first, "hourly", helsinki) == bucket(second, "hourly", helsinki)
    assert bucket(first, "hourly", helsinki) == "2026-10-25 03:00"
    # one day before 12:00 EET on the 25th is 12:00 EEST on the 24th: 25 real hours
    newest = at("2026-10-25 10:00")
    snapshots = [snap("newest", newest), snap("25h", newest - 25 * 3600)]
    snapshots.append(snap("25h-1s", newest - 25 * 3600 - 1))
    decision = decide(snapshots, tz=helsinki, keep_within="1d")
    assert sorted(s["id"] for s in decision.keep) == ["25h", "newest"]


def test_oldest_is_kept_when_a_rule_finds_fewer_buckets_than_asked() -> None:
    snapshots = [snap(f"s{n}", f"2026-11-{n:02d} 10:00") for n in (1, 2, 3)]
    decision = decide(snapshots, keep_monthly=12)
    assert sorted(s["id"] for s in decision.keep) == ["s1", "s3"]
    assert decision.reasons["s1"] == ["oldest monthly"]
    assert decision.reasons["s3"] == ["monthly 2026-11"]


def test_no_oldest_when_the_oldest_already_fills_its_own_bucket() -> None:
    snapshots = [snap("oct", "2026-10-05 10:00"), snap("nov", "2026-11-05 10:00")]
    decision = decide(snapshots, keep_monthly=12)
    assert decision.reasons == {"oct": ["monthly 2026-10"], "nov": ["monthly 2026-11"]}


def test_no_oldest_when_enough_buckets_exist() -> None:
    assert kept(DAILY_WEEK, keep_daily=20) == [f"d{day:02d}" for day in range(1, 21)]
    reasons = decide(DAILY_WEEK, keep_daily=3).reasons
    assert reasons == {
        "d18": ["daily 2026-11-18"],
        "d19": ["daily 2026-11-19"],
        "d20": ["daily 2026-11-20"],
    }


# ------------------------------------------------------------------ keep-within


def test_keep_within_boundary_is_inclusive() -> None:
    snapshots = [
        snap("newest", "2026-11-20 10:00"),
        snap("exactly", "2026-11-10 10:00"),
        snap("one-second-older", "2026-11-10 09:59:59"),
    ]
    decision = decide(snapshots, keep_within="10d")
    assert sorted(s["id"] for s in decision.keep) == ["exactly", "newest"]
    assert decision.reasons["exactly"] == ["within 10d"]


def test_keep_within_counts_from_the_newest_snapshot_not_from_now() -> None:
    # backups stopped 60 days ago: the last ten days of them are still kept
    snapshots = [snap(f"s{n}", NOW - (60 + n) * 86400) for n in range(20)]
    assert kept(snapshots, keep_within="10d") == sorted(f"s{n}" for n in range(11))


@pytest.mark.parametrize(
    ("newest", "duration", "bound"),
    [
        ("2026-08-31 10:00", "6m", "2026-02-28 10:00"),  # clamped to the month's last day
        ("2024-08-31 10:00", "6m", "2024-02-29 10:00"),  # leap year
        ("2026-11-20 10:00", "1y", "2025-11-20 10:00"),
        ("2026-11-20 10:00", "1y6m", "2025-05-20 10:00"),
        ("2026-03-15 10:00", "3m", "2025-12-15 10:00"),  # across a year
        ("2026-11-20 10:00", "2w", "2026-11-06 10:00"),
        ("2026-11-20 10:00", "36h", "2026-11-18 22:00"),
        ("2026-11-20 10:00", "1d12h", "2026-11-18 22:00"),
    ],
)
def test_keep_within_calendar_arithmetic(newest: str, duration: str, bound: str) -> None:
    snapshots = [
        snap("newest", newest),
        snap("at-bound", bound),
        snap("before", at(bound) - 1),
    ]
    assert kept(snapshots, keep_within=duration) == ["at-bound", "newest"]


def test_keep_within_covers_everything_for_a_huge_duration() -> None:
    assert kept(DAILY_WEEK, keep_within="5000y") == [f"d{day:02d}" for day in range(1, 21)]


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("12h", {"hours": 12}),
        ("10d", {"days": 10}),
        ("2w", {"days": 14}),
        ("6m", {"months": 6}),
        ("1y", {"years": 1}),
        ("1y6m7d2h", {"years": 1, "months": 6, "days": 7, "hours": 2}),
        (" 10D ", {"days": 10}),
    ],
)
def test_parse_duration(text: str, fields: dict) -> None:
    duration = parse_duration(text)
    assert {k: getattr(duration, k) for k in ("years", "months", "days", "hours")} == {
        "years": 0,
        "months": 0,
        "days": 0,
        "hours": 0,
        **fields,
    }


@pytest.mark.parametrize("text", ["", "10", "d", "10x", "1.5d", "-3d", "0d", "0y0m", "10 d"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


# ------------------------------------------------------------------ tags


def test_keep_tags_one_entry_needs_all_its_tags_entries_are_alternatives() -> None:
    snapshots = [
        snap("nightly", "2026-11-18 10:00", tags=["nightly"]),
        snap("both", "2026-11-17 10:00", tags=["a", "b"]),
        snap("only-a", "2026-11-16 10:00", tags=["a"]),
        snap("weekly", "2026-11-15 10:00", tags=["weekly", "x"]),
        snap("none", "2026-11-14 10:00"),
    ]
    decision = decide(snapshots, keep_tags=["nightly", "b,a", "weekly"])
    assert sorted(s["id"] for s in decision.keep) == ["both", "nightly", "weekly"]
    assert decision.reasons["both"] == ["tag a,b"]
    assert decision.reasons["nightly"] == ["tag nightly"]


def test_tag_only_policy_that_would_empty_a_group_is_refused() -> None:
    snapshots = [
        snap("tagged", "2026-11-18 10:00", tags=["keep"]),
        snap("other-host", "2026-11-18 10:00", hostname="host2"),
    ]
    with pytest.raises(UsageError, match=r"would remove all 1 snapshot.*host host2"):
        decide(snapshots, keep_tags=["keep"])
    # one group: fine, the tagged one stays
    assert kept(snapshots, group_by="", keep_tags=["keep"]) == ["tagged"]


# ------------------------------------------------------------------ combined rules and reasons


def test_reasons_accumulate_on_the_newest_snapshot() -> None:
    decision = decide(
        DAILY_WEEK,
        keep_last=1,
        keep_hourly=1,
        keep_daily=1,
        keep_weekly=1,
        keep_monthly=1,
        keep_yearly=1,
        keep_within="1d",
    )
    assert decision.reasons == {
        "d20": [
            "last",
            "hourly 2026-11-20 03:00",
            "daily 2026-11-20",
            "weekly 2026-W47",
            "monthly 2026-11",
            "yearly 2026",
            "within 1d",
        ],
        "d19": ["within 1d"],
    }


def test_combined_policy_is_the_union_of_its_rules() -> None:
    assert kept(DAILY_WEEK, keep_last=2, keep_weekly=3) == ["d08", "d15", "d19", "d20"]


def test_future_snapshots_are_kept_and_take_no_slot() -> None:
    snapshots = [
        snap("future", NOW + 3600),
        snap("now", NOW),
        snap("older", NOW - 3600),
    ]
    decision = decide(snapshots, keep_last=1)
    assert decision.reasons == {"future": ["future"], "now": ["last"]}
    assert [s["id"] for s in decision.remove] == ["older"]


def test_same_time_ties_are_broken_by_id_deterministically() -> None:
    snapshots = [snap("bbbb", "2026-11-20 10:00"), snap("aaaa", "2026-11-20 10:00")]
    assert kept(snapshots, keep_last=1) == ["bbbb"]
    assert kept(list(reversed(snapshots)), keep_last=1) == ["bbbb"]


def test_keep_and_remove_are_oldest_first_and_partition_the_input() -> None:
    decision = decide(DAILY_WEEK, keep_last=3)
    assert [s["id"] for s in decision.keep] == ["d18", "d19", "d20"]
    assert [s["id"] for s in decision.remove] == [f"d{day:02d}" for day in range(1, 18)]


# ------------------------------------------------------------------ grouping


TWO_HOSTS = [
    snap("h1-old", "2026-11-18 10:00", hostname="host1"),
    snap("h1-new", "2026-11-19 10:00", hostname="host1"),
    snap("h2-old", "2026-11-18 10:00", hostname="host2"),
    snap("h2-new", "2026-11-19 10:00", hostname="host2"),
]


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        (None, ["h1-new", "h2-new"]),
        ("host", ["h1-new", "h2-new"]),
        (["host"], ["h1-new", "h2-new"]),
        ("paths", ["h2-new"]),  # all share /srv: one group; h2-new wins the tie by id
        ("", ["h2-new"]),
        ([], ["h2-new"]),
    ],
)
def test_group_by_host(group_by: object, expected: list[str]) -> None:
    assert kept(TWO_HOSTS, group_by=group_by, keep_last=1) == expected


def test_paths_group_ignores_order() -> None:
    snapshots = [
        snap("ab", "2026-11-18 10:00", paths=["/a", "/b"]),
        snap("ba", "2026-11-19 10:00", paths=["/b", "/a"]),
        snap("c", "2026-11-17 10:00", paths=["/c"]),
    ]
    decision = decide(snapshots, keep_last=1)
    assert sorted(s["id"] for s in decision.keep) == ["ba", "c"]
    assert [g.key for g in decision.groups] == [
        {"host": "host1", "paths": ["/c"], "platform": None},
        {"host": "host1", "paths": ["/a", "/b"], "platform": None},
    ]


def test_group_by_platform_tags_and_component() -> None:
    db, files = [{"name": "database"}], [{"name": "files"}, {"name": "database"}]
    snapshots = [
        snap("p1", "2026-11-18 10:00", platform="klink", components=db, tags=["x"]),
        snap("p2", "2026-11-19 10:00", platform="klink", components=files, tags=["x"]),
        snap("p3", "2026-11-17 10:00", platform="ovena", components=db, tags=["y"]),
        snap("plain", "2026-11-16 10:00"),
    ]
    assert kept(snapshots, keep_last=1) == ["p2", "p3", "plain"]
    assert kept(snapshots, group_by="component", keep_last=1) == ["p1", "p2", "plain"]
    assert kept(snapshots, group_by="tags", keep_last=1) == ["p2", "p3", "plain"]
    assert kept(snapshots, group_by="component,platform", keep_last=1) == [
        "p1",
        "p2",
        "p3",
        "plain",
    ]
    groups = decide(snapshots, group_by="component", keep_last=1).groups
    assert {"component": ["database", "files"]} in [g.key for g in groups]


def test_group_description() -> None:
    groups = decide(TWO_HOSTS, keep_last=1).groups
    assert groups[0].describe() == "host host1, paths /srv, platform -"
    assert decide(TWO_HOSTS, group_by="", keep_last=1).groups[0].describe() == "all snapshots"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("host", "paths", "platform")),
        ("", ()),
        ("host", ("host",)),
        ("host, tags ,host", ("host", "tags")),
        (["component", "platform"], ("component", "platform")),
    ],
)
def test_parse_group_by(value: object, expected: tuple) -> None:
    assert parse_group_by(value) == expected  # type: ignore[arg-type]


def test_unknown_group_field_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cannot group by 'hostname'"):
        parse_group_by("hostname")


# ------------------------------------------------------------------ refusals and validation


@pytest.mark.parametrize(
    "policy",
    [
        {},
        {"keep_last": 0},
        dict.fromkeys(COUNT_KEYS, 0),
        {"keep_tags": []},
        {"keep_within": None, "keep_last": None},
        {"keep_within": ""},
    ],
)
def test_empty_policy_is_refused(policy: dict) -> None:
    with pytest.raises(UsageError, match="empty retention policy"):
        apply_policy(DAILY_WEEK, policy, now=NOW, tz=UTC)


def test_empty_policy_is_refused_even_without_snapshots() -> None:
    with pytest.raises(UsageError, match="empty retention policy"):
        apply_policy([], Policy(), now=NOW)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"keep_last": -1}, "keep_last must be a whole number"),
        ({"keep_daily": 1.5}, "keep_daily must be a whole number"),
        ({"keep_daily": "3"}, "keep_daily must be a whole number"),
        ({"keep_weekly": True}, "keep_weekly must be a whole number"),
        ({"keep_lats": 1}, "unknown retention key"),
        ({"keep_tags": "nightly"}, "keep_tags must be a list"),
        ({"keep_tags": [","]}, "empty tag"),
        ({"keep_within": "10"}, "invalid duration"),
    ],
)
def test_invalid_policies(policy: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Policy.from_mapping(policy)


def test_no_snapshots_gives_no_groups() -> None:
    assert apply_policy([], {"keep_last": 1}, now=NOW).groups == []


def test_policy_description_and_dict() -> None:
    policy = Policy.from_mapping(
        {"keep_last": 3, "keep_daily": 7, "keep_within": "10d", "keep_tags": ["b,a", "nightly"]}
    )
    assert policy.describe() == (
        "keep the last 3, 7 daily, within 10d of the newest, tag a,b, tag nightly"
    )
    assert policy.as_dict() == {
        "keep_last": 3,
        "keep_daily": 7,
        "keep_within": "10d",
        "keep_tags": ["a,b", "nightly"],
    }


# ------------------------------------------------------------------ properties

HOSTS = ["alpha", "beta"]
TAGS = ["nightly", "weekly", "manual"]


@st.composite
def snapshot_lists(draw: st.DrawFn) -> list[dict]:
    count = draw(st.integers(min_value=0, max_value=40))
    offsets = draw(
        st.lists(
            st.integers(min_value=-3 * 86400, max_value=800 * 86400), min_size=count, max_size=count
        )
    )
    snapshots = []
    for number, offset in enumerate(offsets):
        snapshots.append(
            {
                "id": f"{number:04x}",
                "time": NOW - offset,
                "hostname": draw(st.sampled_from(HOSTS)),
                "tags": draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=2)),
                "paths": ["/srv"],
            }
        )
    return snapshots


policies = st.builds(
    Policy.from_mapping,
    st.fixed_dictionaries(
        {},
        optional={
            **{key: st.integers(min_value=0, max_value=6) for key in COUNT_KEYS},
            "keep_within": st.sampled_from(["12h", "3d", "2w", "2m", "1y"]),
            "keep_tags": st.lists(st.sampled_from([*TAGS, "nightly,weekly"]), max_size=2),
        },
    ),
)


def _single_rules(policy: Policy) -> list[Policy]:
    empty = Policy()
    rules = [
        dataclasses.replace(empty, **{key: getattr(policy, key)})
        for key in COUNT_KEYS
        if getattr(policy, key)
    ]
    if policy.keep_within:
        rules.append(dataclasses.replace(empty, keep_within=policy.keep_within))
    rules += [dataclasses.replace(empty, keep_tags=(tags,)) for tags in policy.keep_tags]
    return rules


def _only_tags(policy: Policy) -> bool:
    return not any(getattr(policy, key) for key in COUNT_KEYS) and not policy.keep_within


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots=snapshot_lists(), policy=policies, group_by=st.sampled_from(["host", ""]))
def test_properties_of_a_decision(snapshots: list[dict], policy: Policy, group_by: str) -> None:
    if policy.is_empty():
        with pytest.raises(UsageError, match="empty retention policy"):
            apply_policy(snapshots, policy, now=NOW, group_by=group_by, tz=UTC)
        return
    try:
        decision = apply_policy(snapshots, policy, now=NOW, group_by=group_by, tz=UTC)
    except UsageError:
        # only a policy of tags alone can leave a group without any snapshot
        assert _only_tags(policy)
        return
    kept_ids = {s["id"] for s in decision.keep}
    removed_ids = {s["id"] for s in decision.remove}
    # a partition: nothing kept is listed as removed, nothing is lost
    assert not kept_ids & removed_ids
    assert kept_ids | removed_ids == {s["id"] for s in snapshots}
    assert set(decision.reasons) == kept_ids
    assert all(decision.reasons[sid] for sid in kept_ids)
    # every snapshot kept by a rule alone is kept by the combined policy
    for rule in _single_rules(policy):
        try:
            alone = apply_policy(snapshots, rule, now=NOW, group_by=group_by, tz=UTC)
        except UsageError:
            assert rule.keep_tags
            continue
        assert {s["id"] for s in alone.keep} <= kept_ids, rule
    # the newest snapshot of each group (not in the future) survives any non-tag rule
    for group in decision.groups:
        members = group.keep + group.remove
        current = [s for s in members if s["time"] <= NOW]
        assert all(s["id"] in kept_ids for s in members if s["time"] > NOW)
        if current and not _only_tags(policy):
            newest = max(current, key=lambda s: (s["time"], s["id"]))
            assert newest["id"] in kept_ids
            if policy.keep_last >= 1:
                assert "last" in decision.reasons[newest["id"]]
        if policy.keep_last:
            lasts = [sid for sid, why in group.reasons.items() if "last" in why]
            assert len(lasts) == min(policy.keep_last, len(current))


@settings(max_examples=60, deadline=None)
@given(snapshots=snapshot_lists(), keep_last=st.integers(min_value=1, max_value=5))
def test_keep_last_keeps_exactly_the_newest_per_host(snapshots: list[dict], keep_last: int) -> None:
    decision = apply_policy(snapshots, {"keep_last": keep_last}, now=NOW, group_by="host", tz=UTC)
    for host in HOSTS:
        mine = sorted(
            (s for s in snapshots if s["hostname"] == host and s["time"] <= NOW),
            key=lambda s: (s["time"], s["id"]),
        )
        expected = {s["id"] for s in mine[-keep_last:]}
        expected |= {s["id"] for s in snapshots if s["hostname"] == host and s["time"] > NOW}
        assert {s["id"] for s in decision.keep if s["hostname"] == host} == expected
