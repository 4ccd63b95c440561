#!/usr/bin/env bash
# Set up everything the tests need (Debian packages, virtualenv) and run the whole suite.
# Extra arguments go to pytest, e.g. ./test.sh -k restore -x
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
.venv/bin/ruff check safehold tests benchmarks
.venv/bin/ruff format --check safehold tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
