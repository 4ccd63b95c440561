"""How fast the dashboard's overview answers: three platforms with 1,000 snapshots each.

Three repositories are made (once; kept in the work directory for later runs) and filled
cheaply through the repository API: 1,000 platform snapshot documents each (two components,
summaries, downtime; no data, no trees) and 20 drill records, spread over the last 1,000
hours. Then the WSGI application (safehold/web/app.py) is called in-process, as the server
calls it, with a platform file per repository:

- first view: every snapshot and drill document is read and decrypted (then held in memory);
- warm views: within the cache's time to live (the median of 20);
- after the time to live: the listings are read again, nothing changed, nothing reloaded.

The target (issue 15): a warm overview under 300 ms. Usage::

    python benchmarks/dashboard.py [--workdir bench-data/dashboard] [--snapshots 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

from werkzeug.test import Client

from safehold.ops.drill_records import save_drill
from safehold.repo.repository import Repository
from safehold.web.app import Dashboard, Settings
from safehold.web.data import load_sources
from safehold.web.security import Guard

PASSPHRASE = b"benchmark-passphrase"
TOKEN = "benchmark-token-0123456789"
TARGET_MS = 300.0
PLATFORMS = ("kaapana", "klink", "ovena")


def _snapshot(platform: str, when: float, rng: random.Random) -> dict:
    files, dump = rng.randint(10**9, 2 * 10**9), rng.randint(10**8, 3 * 10**8)
    return {
        "version": 1,
        "time": when,
        "hostname": "bench-host",
        "username": "root",
        "paths": ["/srv/data"],
        "tags": ["nightly", "component:files", "component:db"],
        "tree": os.urandom(32),
        "parent": None,
        "program": "safehold benchmark",
        "excludes": [],
        "platform": platform,
        "strategy": "hot+cold",
        "status": "ok",
        "downtime": {"stopped": ["app"], "started": ["app"], "seconds": rng.uniform(2, 30)},
        "components": [
            {
                "name": "files",
                "type": "files",
                "status": "ok",
                "bytes": files,
                "duration": rng.uniform(30, 90),
                "critical": True,
                "error": None,
            },
            {
                "name": "db",
                "type": "postgres",
                "status": "ok",
                "bytes": dump,
                "duration": rng.uniform(5, 20),
                "critical": True,
                "error": None,
            },
        ],
        "summary": {
            "duration": rng.uniform(40, 120),
            "bytes_total": files + dump,
            "bytes_added_raw": rng.randint(10**6, 10**8),
            "bytes_added_stored": rng.randint(10**6, 5 * 10**7),
            "errors": [],
            "warnings": [],
        },
    }


def _fill(root: Path, count: int) -> list[Path]:
    """The platform files, making and filling the repositories on the first run."""
    configs = []
    rng = random.Random(15)
    now = time.time()
    for name in PLATFORMS:
        repo = root / f"repo-{name}"
        config = root / f"{name}.yaml"
        if not repo.exists():
            started = time.perf_counter()
            with Repository.init(str(repo), PASSPHRASE) as repository:
                for number in range(count):
                    when = now - (count - number) * 3600.0
                    repository.save_snapshot(_snapshot(name, when, rng))
                for number in range(20):
                    when = now - (20 - number) * 50 * 3600.0
                    save_drill(
                        repository,
                        {
                            "version": 1,
                            "platform": name,
                            "snapshot": "0" * 64,
                            "time": when,
                            "status": "passed",
                            "rto_seconds": rng.uniform(60, 600),
                            "components": [
                                {
                                    "name": "files",
                                    "type": "files",
                                    "status": "passed",
                                    "restore_seconds": rng.uniform(30, 300),
                                }
                            ],
                        },
                    )
            print(f"made {repo}: {count} snapshots in {time.perf_counter() - started:.1f} s")
        config.write_text(
            json.dumps(
                {
                    "platform": name,
                    "repository": str(repo),
                    "strategy": "hot",
                    "components": [{"name": "files", "type": "files", "paths": ["/srv/data"]}],
                    "schedule": {"backup": "30 2 * * *", "drill": "0 4 * * 0"},
                }
            )
        )
        configs.append(config)
    return configs


def _view(client: Client) -> float:
    started = time.perf_counter()
    response = client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.status_code
    assert response.get_data(as_text=True).count('class="card ') == len(PLATFORMS)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent.parent
    parser.add_argument("--workdir", default=str(here / "bench-data" / "dashboard"))
    parser.add_argument("--snapshots", type=int, default=1000)
    args = parser.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SAFEHOLD_CACHE_DIR", str(root / "cache"))
    configs = _fill(root, args.snapshots)
    sources = load_sources([str(c) for c in configs], lambda: PASSPHRASE, state_dir=root)
    client = Client(Dashboard(sources, Guard(TOKEN), Settings()))
    first = _view(client)
    warm = statistics.median(_view(client) for _ in range(20))
    for view in sources.views:
        view.invalidate()
    relisted = _view(client)
    print(f"overview of {len(PLATFORMS)} platforms x {args.snapshots} snapshots:")
    print(f"  first view (reads every document): {first:8.1f} ms")
    print(f"  warm view (median of 20):          {warm:8.1f} ms")
    print(f"  after the TTL (listings only):     {relisted:8.1f} ms")
    verdict = "met" if warm < TARGET_MS and relisted < TARGET_MS else "MISSED"
    print(f"target: under {TARGET_MS:.0f} ms: {verdict}")
    sources.close()
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
