#!/usr/bin/env bash
# The demo: set up safehold, make a small sample platform (imaging files, a SQLite index,
# config), describe it in a platform file, back it up into a local repository (hot+cold:
# copied while "running", then the changes again with the service stopped), change it,
# back it up again, restore everything into scratch space, prove the restore identical,
# verify the repository, and end with a restore drill (what a scheduled drill proves).
# Everything lives in ./demo-data; run it again to add snapshots, delete the folder to start over.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh sqlite3:sqlite3 \
    pkg-config:pkg-config /usr/include/fuse3/fuse_lowlevel.h:libfuse3-dev
. .venv/bin/activate

demo=$PWD/demo-data
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
os.makedirs(os.path.join(root, "db"), exist_ok=True)
database = sqlite3.connect(os.path.join(root, "db", "index.sqlite"))
database.execute("create table if not exists studies (id integer primary key, name text)")
database.executemany("insert into studies (name) values (?)", [(f"study {n}",) for n in range(100)])
database.commit()
PY
du -sh "$platform"

cat > "$demo/platform.yaml" <<YAML
# A platform file: what to back up, and how to quiesce it. See docs/platforms.md.
repository: $demo/repo
platform: demo
strategy: hot+cold
services:                 # a stand-in service: the demo has no real one to stop
  control: command
  stop_command: touch $demo/service-stopped
  start_command: rm -f $demo/service-stopped
components:
  - name: index           # consistent copy through SQLite's online backup API
    type: sqlite
    path: $platform/db/index.sqlite
  - name: images
    type: files
    paths: [$platform/dicom]
  - name: config
    type: files
    paths: [$platform/config]
YAML
step "safehold config validate $demo/platform.yaml"
safehold config validate "$demo/platform.yaml"

if [ ! -f "$demo/repo/meta/format" ]; then
    step "safehold init"
    safehold init --repo "$demo/repo"
fi
export SAFEHOLD_REPO=$demo/repo
step "safehold backup --config platform.yaml"
safehold backup --config "$demo/platform.yaml" --tag demo
step "change the platform, back up again (only the changes are read)"
date >> "$platform/config/values.yaml"
sqlite3 "$platform/db/index.sqlite" "insert into studies (name) values ('a new study')"
safehold backup --config "$demo/platform.yaml" --tag demo
step "safehold snapshots"
safehold snapshots
step "safehold diff (previous vs latest)"
mapfile -t ids < <(safehold snapshots --json | python -c 'import json,sys; [print(s["id"]) for s in json.load(sys.stdin)[-2:]]')
safehold diff "${ids[0]}" "${ids[1]}"
step "safehold ls latest:/index"
safehold ls latest:/index
step "safehold restore --config platform.yaml --target $demo/restore"
rm -rf "$demo/restore"
safehold restore --config "$demo/platform.yaml" --target "$demo/restore"
diff -r "$platform/dicom" "$demo/restore/images$platform/dicom"
diff -r "$platform/config" "$demo/restore/config$platform/config"
rows=$(sqlite3 "$demo/restore/index/index.sqlite" "select count(*) from studies")
live=$(sqlite3 "$platform/db/index.sqlite" "select count(*) from studies")
[ "$rows" = "$live" ] && echo "restored platform is identical: files match, database has $rows rows"
step "safehold check --read-data"
safehold check --read-data
step "safehold drill --config platform.yaml (restore into scratch space, check, time it)"
safehold drill --config "$demo/platform.yaml"
