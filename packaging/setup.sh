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
# Host-wide BIRD daemons: in the host's network namespace and without a control
# socket of their own (-s), as the package's service starts them; the lab's BIRDs
# run inside their namespaces with -s.
host_birds() {
    local init_net pid
    init_net=$(readlink /proc/1/ns/net)
    for pid in $(pgrep -x bird || true); do
        [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/bird ] || continue
        [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$init_net" ] || continue
        tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qx -- -s && continue
        echo "$pid"
    done
}

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    birds_before=$(host_birds)
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    # bird2's postinst starts Debian's bird with /etc/bird/bird.conf, unless a
    # policy-rc.d forbids it (containers) or systemd is not running. dpagent
    # announces nothing through that one until it is configured
    # (packaging/bird-dpagent.conf), so a bird this install started is stopped
    # again: through systemd when it runs the service, else by the PID started.
    for pid in $(host_birds); do
        grep -qx "$pid" <<<"$birds_before" && continue
        if [ -d /run/systemd/system ] && systemctl is-active -q bird.service; then
            echo "setup: stopping bird.service, started by installing bird2 (configure it, then start it)"
            systemctl stop bird.service
        else
            echo "setup: stopping bird (PID $pid), started by installing bird2"
            kill "$pid"
        fi
    done
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
