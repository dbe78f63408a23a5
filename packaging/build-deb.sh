#!/usr/bin/env bash
# `make deb`: dist/dpagent_<version>-1_<arch>.deb for Debian 12, built with dpkg-deb alone.
#
# What goes where:
#   /usr/lib/dpagent/agent       the Python package, byte-compiled, with its native modules (cffi)
#                                and the XDP object, built here by native/build.py with Debian's
#                                python3 and python3-cffi, so they match python3-cffi-backend
#   /usr/lib/dpagent/vendor      pyroute2 and uvloop at the versions the virtual environment
#                                tests (Debian 12's are too old: see README); nftables,
#                                prometheus_client and cffi's backend are Debian's, by Depends
#   /usr/bin/dpagent, agentctl   launchers (deb/launcher.py) that find /usr/lib/dpagent
#   /lib/systemd/system, /usr/lib/sysusers.d, /etc/dpagent (the example, a conffile)
#   /usr/share/man/man8          dpagent.8 and agentctl.8, from the parsers' own help (agent.manpage)
# The maintainer scripts are deb/postinst, prerm and postrm. Every file is root's in the
# package (--root-owner-group); postinst gives /etc/dpagent to the dpagent group.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
out=${OUT:-$here/dist}
python=/usr/bin/python3
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/pyproject.toml")
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
lib=$root/usr/lib/dpagent

# The native build runs on a copy, so the working tree's own build (the venv's cffi) is untouched.
mkdir -p "$work/src"
tar -C "$here" --exclude=__pycache__ --exclude=agent/_native --exclude=native/build -cf - agent native \
    | tar -C "$work/src" -xf -
"$python" "$work/src/native/build.py" >/dev/null
install -d -m 0755 "$lib"
cp -r "$work/src/agent" "$lib/"

vendored() { "$venv/bin/python" -c "from importlib.metadata import version; print(version('$1'))"; }
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-compile --target "$lib/vendor" \
    "pyroute2==$(vendored pyroute2)" "uvloop==$(vendored uvloop)" 2> >(grep -v "^WARNING: Location" >&2)
rm -rf "$lib/vendor/bin"
# As dh_strip would: the wheel's uvloop carries 13 MB of symbols.
find "$lib" -name "*.so" -exec strip --strip-unneeded {} +
# So that importlib.metadata (dpagent_build_info) knows the version without pip.
install -d "$lib/dpagent-$version.dist-info"
printf 'Metadata-Version: 2.1\nName: dpagent\nVersion: %s\n' "$version" > "$lib/dpagent-$version.dist-info/METADATA"

for command in dpagent:agent.runtime.main agentctl:agent.cli; do
    name=${command%%:*}
    install -d -m 0755 "$root/usr/bin"
    sed "s/COMMAND/$name/; s/MODULE/${command#*:}/" "$here/packaging/deb/launcher.py" > "$root/usr/bin/$name"
    chmod 0755 "$root/usr/bin/$name"
    install -d -m 0755 "$root/usr/share/man/man8"
    PYTHONPATH="$lib:$lib/vendor" PYTHONDONTWRITEBYTECODE=1 "$python" -m agent.manpage "$name" --version "$version" \
        | gzip -9n > "$root/usr/share/man/man8/$name.8.gz"
done
"$python" -m compileall -q "$lib"

install -D -m 0644 "$here/packaging/dpagent.service" "$root/lib/systemd/system/dpagent.service"
install -D -m 0644 "$here/packaging/dpagent.sysusers" "$root/usr/lib/sysusers.d/dpagent.conf"
install -d -m 0750 "$root/etc/dpagent"
install -m 0640 "$here/packaging/dpagent.toml" "$root/etc/dpagent/dpagent.toml"
install -D -m 0644 "$here/packaging/deb/copyright" "$root/usr/share/doc/dpagent/copyright"

install -d -m 0755 "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/packaging/deb/$script" "$root/DEBIAN/$script"
done
echo /etc/dpagent/dpagent.toml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed "s/@VERSION@/$version-1/; s/@ARCH@/$arch/; s/@SIZE@/$size/" "$here/packaging/deb/control.in" > "$root/DEBIAN/control"

mkdir -p "$out"
deb="$out/dpagent_${version}-1_${arch}.deb"
dpkg-deb --root-owner-group -Zxz -z6 --build "$root" "$deb" >/dev/null
echo "$deb"
