"""The dashboard's pure parts: chart thinning and escaping, the state rules, paths, listen
addresses, the guard's comparisons."""

from __future__ import annotations

import pytest

from safehold.errors import UsageError
from safehold.ops.status import Policy, platform_status
from safehold.web.browser import BadPath, split_path
from safehold.web.charts import MAX_POINTS, downsample, line_chart
from safehold.web.security import Guard, parse_listen, require_safe_transport
from safehold.web.views import state_of

NOW = 1_800_000_000.0


def test_downsample_keeps_spikes_and_ends():
    points = [(float(i), 1.0) for i in range(1000)]
    points[517] = (517.0, 99.0)
    points[733] = (733.0, -5.0)
    thinned = downsample(points)
    assert len(thinned) <= MAX_POINTS + 1
    assert (517.0, 99.0) in thinned and (733.0, -5.0) in thinned
    assert thinned[-1] == points[-1] and thinned[0] == points[0]
    assert [p[0] for p in thinned] == sorted(p[0] for p in thinned)
    assert downsample(points[:10]) == points[:10]


def test_chart_of_a_thousand_points_and_escaping():
    svg = line_chart("<b>size</b>", [(NOW + i, float(i)) for i in range(1000)], lambda v: "<v>")
    assert 'data-total="1000"' in svg
    assert svg.count('class="point"') <= MAX_POINTS + 1
    assert "<b>" not in svg and "&lt;b&gt;size" in svg and "&lt;v&gt;" in svg
    assert "no data" in line_chart("<x>", [], str) and "<x>" not in line_chart("<x>", [], str)


def _snapshot(age: float, status: str = "ok", component_status: str = "ok") -> dict:
    return {
        "id": f"{int(age):064x}",
        "time": NOW - age,
        "platform": "p",
        "status": status,
        "components": [{"name": "db", "type": "postgres", "status": component_status}],
        "summary": {},
    }


def _drill(age: float, status: str = "passed") -> dict:
    return {"id": "d", "platform": "p", "time": NOW - age, "status": status, "rto_seconds": 1.0}


@pytest.mark.parametrize(
    ("snapshots", "drills", "state"),
    [
        ([_snapshot(3600)], [_drill(60)], "ok"),
        ([_snapshot(3 * 86400)], [_drill(60)], "warning"),  # stale
        ([_snapshot(3600)], [_drill(8 * 86400)], "warning"),  # drill too old
        ([_snapshot(3600)], [], "warning"),  # never drilled
        ([_snapshot(3600)], [_drill(60, "failed")], "failing"),
        ([], [], "failing"),  # no backup
        ([_snapshot(7200), _snapshot(3600, "failed", "failed")], [_drill(60)], "failing"),
        (  # a component that failed once but is ok now: a warning
            [_snapshot(7200, "partial", "failed"), _snapshot(3600)],
            [_drill(60)],
            "warning",
        ),
    ],
)
def test_state_rules(snapshots, drills, state):
    status = platform_status("p", snapshots, drills, NOW, Policy())
    assert state_of(status) == state


@pytest.mark.parametrize("raw", [b"/..", b"/a/../b", b"/a/./b", b"/a//b", b"/a\0", b".."])
def test_bad_paths(raw):
    with pytest.raises(BadPath):
        split_path(raw)


def test_good_paths():
    assert split_path(b"/") == [] and split_path(b"") == []
    assert split_path(b"/a/b\xff/") == [b"a", b"b\xff"]


def test_listen_addresses():
    assert parse_listen("127.0.0.1:8731").loopback
    assert parse_listen("[::1]:0").port == 0
    assert parse_listen("0.0.0.0").port == 8731
    for bad in ("localhost:80", "127.0.0.1:99999", "[::1]x", "1.2.3.4:port"):
        with pytest.raises(UsageError):
            parse_listen(bad)
    public = parse_listen("192.0.2.1:8731")
    with pytest.raises(UsageError, match="--insecure-http"):
        require_safe_transport(public, tls=False, insecure_http=False)
    require_safe_transport(public, tls=True, insecure_http=False)
    require_safe_transport(public, tls=False, insecure_http=True)


def test_guard():
    guard = Guard("a-token-of-some-length")
    assert guard.token_ok("a-token-of-some-length")
    assert not guard.token_ok("a-token-of-some-lengtH") and not guard.token_ok("")
    assert not guard.token_ok(None)
    assert guard.session_ok(guard.session) and not guard.session_ok(guard.csrf)
    assert guard.csrf_ok(guard.csrf) and not guard.csrf_ok(guard.session)
    assert "a-token" not in guard.session + guard.csrf
    assert Guard("another-token-0000000").session != guard.session
    assert not guard.token_ok("\udcff")  # not UTF-8 encodable: refused, no error


def test_other_commands_do_not_load_the_web_libraries():
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "from safehold.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['config', 'schema'])\n"
        "web = ('werkzeug', 'jinja2', 'cheroot', 'safehold.web')\n"
        "loaded = [m for m in web if m in sys.modules]\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
