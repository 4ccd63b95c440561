#!/usr/bin/env bash
# The demo: set up safehold, make a small sample platform (imaging files, a SQLite index,
# config), back it up into a local repository, change it, back it up again, restore it into
# scratch space, prove the restore identical, and verify the repository.
# Everything lives in ./demo-data; run it again to add snapshots, delete the folder to start over.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh sqlite3:sqlite3
. .venv/bin/activate

demo=$PWD/demo-data
export SAFEHOLD_REPO=$demo/repo
export SAFEHOLD_PASSPHRASE=${SAFEHOLD_PASSPHRASE:-demo-passphrase-change-me}
platform=$demo/platform
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "sample platform in $platform"
python - "$platform" <<'PY'
import os, random, sqlite3, sys
root = sys.argv[1]
rng = random.Random(7)
for study in range(20):
    folder = os.path.join(root, "dicom", f"study-{study:03d}")
    os.makedirs(folder, exist_ok=True)
    for image in range(10):
        path = os.path.join(folder, f"img-{image:03d}.dcm")
        if not os.path.exists(path):
            with open(path, "wb") as handle:
                handle.write(b"DICM" + rng.randbytes(rng.randint(20_000, 200_000)))
os.makedirs(os.path.join(root, "config"), exist_ok=True)
with open(os.path.join(root, "config", "values.yaml"), "w") as handle:
    handle.write("global:\n  fast_data_dir: /home/kaapana\n  slow_data_dir: /home/kaapana\n")
database = sqlite3.connect(os.path.join(root, "index.sqlite"))
database.execute("create table if not exists studies (id integer primary key, name text)")
database.executemany("insert into studies (name) values (?)", [(f"study {n}",) for n in range(100)])
database.commit()
PY
du -sh "$platform"

if [ ! -f "$SAFEHOLD_REPO/meta/format" ]; then
    step "safehold init"
    safehold init
fi
step "safehold backup $platform --tag demo"
safehold backup "$platform" --tag demo
step "change one file, back up again (only the change is read)"
date >> "$platform/config/values.yaml"
safehold backup "$platform" --tag demo
step "safehold snapshots"
safehold snapshots
step "safehold diff (previous vs latest)"
mapfile -t ids < <(safehold snapshots --json | python -c 'import json,sys; [print(s["id"]) for s in json.load(sys.stdin)[-2:]]')
safehold diff "${ids[0]}" "${ids[1]}"
step "safehold ls latest:$platform"
safehold ls "latest:$platform"
step "safehold restore latest:$platform --target $demo/restore"
rm -rf "$demo/restore"
safehold restore "latest:$platform" --target "$demo/restore"
diff -r "$platform" "$demo/restore" && echo "restored tree is identical to the platform"
step "safehold check --read-data"
safehold check --read-data
