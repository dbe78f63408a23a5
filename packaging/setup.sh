#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian 12 machine (run as root): apt
# packages, a virtual environment that sees Debian's nftables module, the
# Python package with its test extras, and the native build.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venv=${VENV:-.venv}

mapfile -t wanted < <(grep -vE '^\s*(#|$)' packaging/apt-packages.txt)
missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's python3-nftables lives in the system site-packages of /usr/bin/python3.
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
"$venv/bin/python" -c 'import nftables, prometheus_client, pyroute2, uvloop, cffi' || {
    echo "setup: the virtual environment cannot import its runtime modules" >&2
    exit 1
}
"$venv/bin/python" native/build.py
