#!/usr/bin/env bash
# Set up everything the tests need (Debian packages, virtualenv) and run the whole suite.
# Extra arguments go to pytest, e.g. ./test.sh -k restore -x
set -euo pipefail
cd "$(dirname "$0")"
# Real servers for the integration tests (started by the tests themselves on 127.0.0.1).
scripts/bootstrap.sh '/usr/lib/postgresql/*/bin/initdb:postgresql' \
    /usr/sbin/mariadbd:mariadb-server /usr/sbin/sshd:openssh-server \
    sqlite3:sqlite3 runuser:util-linux setpriv:util-linux fincore:util-linux restic:restic \
    fusermount3:fuse3 pkg-config:pkg-config /usr/include/fuse3/fuse_lowlevel.h:libfuse3-dev \
    /usr/bin/chromium:chromium /usr/sbin/Orthanc:orthanc \
    '/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so:orthanc-postgresql'
.venv/bin/ruff check safehold tests benchmarks
.venv/bin/ruff format --check safehold tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
