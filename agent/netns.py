"""The one network-namespace manager, for the lab, the tests and the benchmarks.

A `Namespaces` object makes uniquely named namespaces (lo up), veth pairs and
bridges between them, starts processes inside them, and at close() ends every
process it started or was given (by PID, or by process group for those that
lead one) and then deletes every namespace it made. close() runs every step
even when one fails, and `with Namespaces() as spaces:` runs it on exceptions
too; a SIGKILLed owner leaves its namespaces behind (`ip netns list`, names
start with the prefix), nothing else host-wide.

`enter` moves only the calling thread into a namespace, so a test can open a
socket there and keep driving the rest from the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, netns: str | None = None, stdin: str | None = None) -> str:
    """Run iproute2 `ip` (in netns if given); raise with its stderr on failure."""
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def batch(netns: str, commands: list[str]) -> str:
    """Several `ip` commands in one process (`ip -batch`), in order; raise on the first failure."""
    return ip("-batch", "-", netns=netns, stdin="\n".join(commands) + "\n")


def run_in(netns: str, argv: list[str], *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command to completion inside a namespace; with `check`, raise with its stderr on failure."""
    done = subprocess.run(["ip", "netns", "exec", netns, *argv], input=input, capture_output=True, text=True)
    if check and done.returncode:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def enter(name: str) -> Iterator[None]:
    """Move this thread into namespace `name` for the with block; sockets and
    child processes created inside belong to it."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


@dataclass
class _Registered:
    process: subprocess.Popen | int
    group: bool  # the process leads its own process group: end the whole group

    @property
    def pid(self) -> int:
        return self.process if isinstance(self.process, int) else self.process.pid


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid and pid != os.getpgrp()
    except ProcessLookupError:
        return False


class Namespaces:
    """Uniquely named namespaces and the processes in them, all gone after close().

    Names are `<prefix>-<role>-<6 hex>` (empty parts left out), so concurrent
    users of one machine never meet; `spawn` starts a process in its own
    process group so that close() ends it with everything it started.
    """

    def __init__(self, prefix: str = "dpn") -> None:
        self.prefix = prefix
        self.names: list[str] = []
        self._processes: list[_Registered] = []

    # --- namespaces and links ----------------------------------------------------------

    def new(self, role: str = "") -> str:
        name = "-".join(part for part in (self.prefix, role, secrets.token_hex(3)) if part)
        ip("netns", "add", name)
        self.names.append(name)
        ip("link", "set", "lo", "up", netns=name)
        return name

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str, *, index_a: int | None = None,
             index_b: int | None = None, up: bool = True) -> None:
        """A veth pair from ns_a/if_a to ns_b/if_b (both ends up unless `up` is false).

        `index_a`/`index_b` pin the interface indexes. Give the two ends different
        ones where carrier changes must be seen at once: the kernel's linkwatch takes
        a veth whose index equals its peer's (possible across namespaces) for a
        physical port and may hold its carrier change back for up to a second."""
        ip("link", "add", if_a, *(["index", str(index_a)] if index_a else []), "type", "veth",
           "peer", "name", if_b, *(["index", str(index_b)] if index_b else []), "netns", ns_b, netns=ns_a)
        if up:
            ip("link", "set", if_a, "up", netns=ns_a)
            ip("link", "set", if_b, "up", netns=ns_b)

    def bridge(self, netns: str, name: str, *ports: str, options: tuple[str, ...] = ()) -> None:
        """A bridge (a switch) in `netns`, up, with `ports` (interfaces already there) enslaved and up."""
        batch(netns, [f"link add {name} type bridge {' '.join(options)}".rstrip(), f"link set {name} up",
                      *(f"link set {port} master {name} up" for port in ports)])

    # --- processes -------------------------------------------------------------------------

    def spawn(self, netns: str, argv: list[str], **popen) -> subprocess.Popen:
        """Start `argv` in `netns` in a process group of its own; close() ends the group."""
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv], start_new_session=True, **popen)
        self._processes.append(_Registered(proc, group=True))
        return proc

    def register(self, process: subprocess.Popen | int) -> None:
        """End this process (a Popen or a PID) at close(): its process group if it leads one, else the PID."""
        pid = process if isinstance(process, int) else process.pid
        self._processes.append(_Registered(process, group=_leads_group(pid)))

    def kill(self, process: subprocess.Popen | int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to a process of ours (its group if it leads one) and, for SIGKILL, reap it."""
        entry = next((e for e in self._processes if e.process is process or e.pid == process), None)
        self._signal(entry or _Registered(process, group=False), sig)

    @staticmethod
    def _signal(entry: _Registered, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if entry.group:
                # Also when the leader is gone: what it started may still be in its group.
                os.killpg(entry.pid, sig)
            elif not isinstance(entry.process, subprocess.Popen) or entry.process.poll() is None:
                os.kill(entry.pid, sig)
        if sig == signal.SIGKILL:
            if isinstance(entry.process, subprocess.Popen):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    entry.process.wait(timeout=10)
            else:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(entry.pid, os.WNOHANG)

    def _stragglers(self, name: str) -> list[int]:
        """PIDs still inside one of our namespaces (started there by us, or moved there)."""
        done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        return [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]

    # --- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """End every process (registered ones first, then any left inside our namespaces,
        by PID), then delete every namespace; each step runs even if an earlier one failed."""
        for entry in reversed(self._processes):
            self._signal(entry, signal.SIGKILL)
        self._processes.clear()
        for name in reversed(self.names):
            for pid in self._stragglers(name):
                self._signal(_Registered(pid, group=False), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.names.clear()

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
