#!/usr/bin/env bash
# Installs what systemd needs to run dpagent: the unit, the `dpagent` system
# user, and /etc/dpagent with the example configuration and a generated key.
# An existing configuration or key is never overwritten.
#
# The dpagent and agentctl commands themselves come from the Python package
# (pip, or a Debian package); BINDIR says where they are (default /usr/bin).
# With DESTDIR the files are only staged below it (package builds, tests): no
# user is created, nothing is chowned and systemd is not told.
#
# The agent runs as `dpagent` with only the capabilities the unit lists, so it
# owns its key (0600, as `dpagent check` wants it) and reads the root-owned
# configuration through its group (0640).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
destdir=${DESTDIR:-}
bindir=${BINDIR:-/usr/bin}
unitdir=/lib/systemd/system   # Debian 12's systemdsystemunitdir
sysusersdir=/usr/lib/sysusers.d
confdir=/etc/dpagent

install -d -m 0755 "$destdir$unitdir" "$destdir$sysusersdir"
sed "s#/usr/bin/dpagent #$bindir/dpagent #g" "$here/dpagent.service" > "$destdir$unitdir/dpagent.service"
chmod 0644 "$destdir$unitdir/dpagent.service"
install -m 0644 "$here/dpagent.sysusers" "$destdir$sysusersdir/dpagent.conf"

install -d -m 0750 "$destdir$confdir"
config="$destdir$confdir/dpagent.toml"
key="$destdir$confdir/key"
if [ ! -e "$config" ]; then
    install -m 0640 "$here/dpagent.toml" "$config"
fi
new_key=
if [ ! -e "$key" ]; then
    (umask 077 && printf '1 %s\n' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" > "$key")
    new_key=yes
fi

if [ -z "$destdir" ]; then
    systemd-sysusers "$sysusersdir/dpagent.conf"
    chgrp dpagent "$confdir" "$config"
    chown dpagent:dpagent "$key"
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
fi

echo "dpagent: installed $unitdir/dpagent.service and $confdir"
if [ -n "$new_key" ]; then
    echo "dpagent: generated $confdir/key: copy it to the other node(s); all nodes need the same key"
fi
echo "dpagent: edit $confdir/dpagent.toml, check it with 'dpagent check', then 'systemctl enable --now dpagent'"
