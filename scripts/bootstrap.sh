#!/usr/bin/env bash
# Shared set-up for demo.sh and test.sh: Debian packages when missing, then a virtualenv in .venv
# with safehold installed (editable) and pinned dependencies. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
want_packages() {  # want_packages COMMAND PACKAGE ...: queue PACKAGE if COMMAND is missing
    local command=$1; shift
    command -v "$command" >/dev/null 2>&1 || need_apt+=("$@")
}
want_packages python3 python3
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
for extra in "$@"; do  # CHECK:PACKAGE, CHECK a command name or an absolute path (glob)
    IFS=: read -r check package <<<"$extra"
    if [[ $check == /* ]]; then
        compgen -G "$check" >/dev/null || need_apt+=("$package")
    else
        want_packages "$check" "$package"
    fi
done
if ((${#need_apt[@]})); then
    echo "installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.safehold-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing safehold and its pinned dependencies into .venv (log: .venv/install.log)"
    if ! .venv/bin/python -m pip install -e '.[test]' >.venv/install.log 2>&1; then
        tail -20 .venv/install.log
        echo "pip install failed: see .venv/install.log" >&2
        exit 1
    fi
    touch "$stamp"
fi
