"""Small pure functions: restore segments, exclude rules, check's data subsets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehold.archive.contentwriter import data_segments as _data_segments
from safehold.archive.excludes import CACHEDIR_SIGNATURE, Excludes
from safehold.errors import UsageError
from safehold.ops.check import parse_subset, select_packs

# ------------------------------------------------------------------ _data_segments


@pytest.mark.parametrize(
    ("offset", "length", "holes", "expected"),
    [
        (0, 100, [], [(0, 100)]),
        (0, 100, [[200, 50]], [(0, 100)]),
        (0, 100, [[100, 50]], [(0, 100)]),
        (100, 100, [[0, 100]], [(100, 100)]),
        (0, 100, [[20, 30]], [(0, 20), (50, 50)]),
        (0, 100, [[0, 100]], []),
        (10, 80, [[0, 1000]], []),
        (0, 100, [[0, 10], [90, 10]], [(10, 80)]),
        (50, 100, [[0, 60], [140, 100]], [(60, 80)]),
        (0, 100, [[10, 10], [30, 10], [50, 10]], [(0, 10), (20, 10), (40, 10), (60, 40)]),
    ],
)
def test_data_segments(offset, length, holes, expected) -> None:
    assert _data_segments(offset, length, holes) == expected


def _model(offset: int, length: int, holes: list[list[int]]) -> set[int]:
    inside = {byte for start, size in holes for byte in range(start, start + size)}
    return {byte for byte in range(offset, offset + length) if byte not in inside}


hole_lists = st.lists(st.tuples(st.integers(0, 300), st.integers(1, 80)), max_size=5)


@settings(max_examples=100, deadline=None)
@given(offset=st.integers(0, 200), length=st.integers(1, 200), raw=hole_lists)
def test_data_segments_cover_exactly_the_bytes_outside_holes(offset, length, raw) -> None:
    # Holes as find_holes reports them: sorted and not overlapping.
    holes, end = [], -1
    for start, size in sorted(raw):
        if start > end:
            holes.append([start, size])
            end = start + size
    segments = _data_segments(offset, length, holes)
    covered = [byte for start, size in segments for byte in range(start, start + size)]
    assert len(covered) == len(set(covered))
    assert set(covered) == _model(offset, length, holes)
    assert all(size > 0 for _, size in segments)


# ------------------------------------------------------------------ Excludes


def test_name_pattern_matches_the_name_at_any_depth() -> None:
    rules = Excludes(["*.tmp", "node_modules"])
    assert rules.excluded(b"/a/b/c.tmp", b"c.tmp")
    assert rules.excluded(b"/x/node_modules", b"node_modules")
    assert not rules.excluded(b"/a/b.tmp/c", b"c")
    assert not rules.excluded(b"/a/node_modules_old", b"node_modules_old")


def test_path_pattern_matches_the_whole_absolute_path() -> None:
    rules = Excludes(["/home/*/tmp", "/var/cache/"])
    assert rules.excluded(b"/home/alice/tmp", b"tmp")
    assert not rules.excluded(b"/home/alice/sub/tmp", b"tmp")  # '*' stays in one component
    assert not rules.excluded(b"/srv/home/alice/tmp", b"tmp")  # anchored at the start
    assert rules.excluded(b"/var/cache", b"cache")  # trailing slash ignored
    assert not rules.excluded(b"/var/cache/x", b"x")  # below is left out by not descending


def test_what_may_match_below_a_directory() -> None:
    rules = Excludes(["/home/*/tmp", "/var/cache/"])
    assert rules.may_match_below(b"/home") and rules.may_match_below(b"/home/alice")
    assert not rules.may_match_below(b"/srv")  # a leading component differs
    assert not rules.may_match_below(b"/home/alice/tmp")  # deeper than any match
    assert not rules.may_match_below(b"/home/alice/sub")
    assert rules.may_match_below(b"/var") and not rules.may_match_below(b"/var/cache")
    assert Excludes(["*.dcm"]).may_match_below(b"/anything/at/all")  # a name: any depth
    # '?' and '[...]' may stand for a '/': nothing is ruled out by depth.
    assert Excludes(["/a?b"]).may_match_below(b"/a/x/y")
    assert Excludes(["/[ab]/c"]).may_match_below(b"/z")


def test_trailing_slash_name_pattern_is_still_a_name_pattern() -> None:
    assert Excludes(["build/"]).excluded(b"/deep/in/build", b"build")


def test_patterns_match_undecodable_names() -> None:
    assert Excludes(["caf*"]).excluded(b"/x/caf\xe9", b"caf\xe9")


def test_blank_and_comment_patterns_are_ignored() -> None:
    rules = Excludes(["", "  ", "# *"])
    assert rules.patterns == []
    assert not rules.excluded(b"/a", b"a")


def test_exclude_file(tmp_path) -> None:
    path = tmp_path / "patterns"
    path.write_text("# comment\n\n*.log\n  /srv/x  \n")
    assert Excludes.from_file(str(path)) == ["*.log", "/srv/x"]


def test_cache_dir_needs_the_option_and_the_signature(tmp_path) -> None:
    (tmp_path / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "CACHEDIR.TAG").write_bytes(b"Signature: 0000\n")
    assert Excludes(caches=True).is_cache_dir(bytes(tmp_path))
    assert not Excludes().is_cache_dir(bytes(tmp_path))
    assert not Excludes(caches=True).is_cache_dir(bytes(tmp_path / "wrong"))
    assert not Excludes(caches=True).is_cache_dir(bytes(tmp_path / "missing"))


# ------------------------------------------------------------------ check subsets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10%", ("percent", 10.0)),
        ("100%", ("percent", 100.0)),
        ("0.5%", ("percent", 0.5)),
        ("1/1", ("slice", (1, 1))),
        ("2/5", ("slice", (2, 5))),
        ("5/5", ("slice", (5, 5))),
    ],
)
def test_parse_subset(text, expected) -> None:
    assert parse_subset(text) == expected


@pytest.mark.parametrize(
    "text",
    ["0%", "101%", "-5%", "abc%", "%", "0/5", "6/5", "1/0", "1/2/3", "x/y", "", "10", "nan%"],
)
def test_parse_subset_refuses(text) -> None:
    with pytest.raises(UsageError, match="--read-data-subset"):
        parse_subset(text)


PACKS = [random.Random(n).randbytes(32) for n in range(50)]


def test_select_all_packs_without_a_subset() -> None:
    assert select_packs(PACKS, None, random.Random(1)) == PACKS


def test_slices_partition_the_packs() -> None:
    slices = [select_packs(PACKS, f"{n}/4", random.Random(1)) for n in range(1, 5)]
    assert sorted(pack for part in slices for pack in part) == sorted(PACKS)
    assert all(slices)


def test_percent_selects_that_share_at_least_one() -> None:
    assert len(select_packs(PACKS, "10%", random.Random(1))) == 5
    assert len(select_packs(PACKS, "1%", random.Random(1))) == 1
    assert sorted(select_packs(PACKS, "100%", random.Random(1))) == sorted(PACKS)
    assert select_packs([], "50%", random.Random(1)) == []


def test_percent_selection_is_random_but_reproducible() -> None:
    assert select_packs(PACKS, "20%", random.Random(5)) == select_packs(
        PACKS, "20%", random.Random(5)
    )
    assert len(set(select_packs(PACKS, "20%", random.Random(5)))) == 10


# ------------------------------------------------------------------ PostgreSQL COPY row counting


@pytest.mark.parametrize(
    "header, name",
    [
        (b"COPY public.items (id, note) FROM stdin;", "public.items"),
        (b'COPY "Archive"."Old Notes" (id) FROM stdin;', "Archive.Old Notes"),
        (b'COPY public."say ""hi""" (a) FROM stdin;', 'public.say "hi"'),
        (b'COPY "a.b".c FROM stdin;', "a.b.c"),
    ],
)
def test_copy_header_table_names(header, name) -> None:
    from safehold.sources.counting import table_name

    assert table_name(header) == name


def test_copy_counter_counts_rows_in_any_chunking() -> None:
    import io
    import random

    from safehold.sources.counting import PostgresCopyCounter

    rows = b"".join(b"%d\tnote\\n%d\n" % (i, i) for i in range(500))
    dump = (
        b"SET x;\nCOPY public.items (id, note) FROM stdin;\n" + rows + b"\\.\n\n"
        b'COPY "Archive"."Old Notes" (a) FROM stdin;\n\\.\n'
        b"COPY public.t3 (a) FROM stdin;\n1\n2\n\\.\n-- end\n"
    )
    for trial in range(50):
        counter = PostgresCopyCounter(io.BytesIO(dump))
        chooser = random.Random(trial)
        while counter.readinto(bytearray(chooser.randint(1, 64))):
            pass
        assert counter.counts == {"public.items": 500, "Archive.Old Notes": 0, "public.t3": 2}
