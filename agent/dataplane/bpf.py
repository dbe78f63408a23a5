"""libbpf through the cffi shim of native/xdp_loader.c: a loaded BPF object, its maps, XDP links.

The object is compiled once, by `make setup` (clang -target bpf); loading it
here runs the verifier and creates its maps, and nothing is compiled at run
time (which is why there is no bcc). Every failure raises BpfError with the
shim's text, which ends with what libbpf (and the verifier) said.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent._native._xdp import ffi, lib

NATIVE = Path(__file__).resolve().parent.parent / "_native"
FILTER_OBJECT = NATIVE / "xdp_filter.bpf.o"
# The kernel keeps 15 characters of a program's name.
FILTER_PROGRAM = "dpagent_filter"
MODES = {"native": lib.DP_ATTACH_NATIVE, "generic": lib.DP_ATTACH_GENERIC}
ATTACHED = {lib.DP_ATTACHED_NONE: None, lib.DP_ATTACHED_DRV: "native", lib.DP_ATTACHED_SKB: "generic",
            lib.DP_ATTACHED_HW: "offload", lib.DP_ATTACHED_MULTI: "multi"}


class BpfError(OSError):
    """A libbpf or bpf(2) call failed; the message says which and why."""


def _said() -> str:
    return ffi.string(lib.dp_last_error()).decode(errors="replace")


def _checked(rc: int, what: str) -> int:
    if rc < 0:
        raise BpfError(-rc, f"{what}: {_said()}")
    return rc


@dataclass(frozen=True)
class TestRun:
    verdict: int
    packet: bytes
    ns_per_run: int


@dataclass(frozen=True)
class Attached:
    """The XDP program on an interface, if any."""

    prog_id: int
    mode: str | None
    name: str


class BpfObject:
    """One loaded object: its programs and maps by name, closed with the object."""

    def __init__(self, path: Path = FILTER_OBJECT) -> None:
        self._obj = lib.dp_open(str(path).encode())
        if self._obj == ffi.NULL:
            raise BpfError(0, f"loading {path}: {_said()}")
        self._maps: dict[str, int] = {}

    def prog_fd(self, name: str = FILTER_PROGRAM) -> int:
        return _checked(lib.dp_prog_fd(self._obj, name.encode()), f"program {name}")

    def prog_id(self, name: str = FILTER_PROGRAM) -> int:
        found = ffi.new("uint32_t *")
        _checked(lib.dp_prog_id(self.prog_fd(name), found), f"program {name}")
        return int(found[0])

    def map_fd(self, name: str) -> int:
        if name not in self._maps:
            self._maps[name] = _checked(lib.dp_map_fd(self._obj, name.encode()), f"map {name}")
        return self._maps[name]

    def test_run(self, packet: bytes, repeat: int = 1, name: str = FILTER_PROGRAM, live: bool = False) -> TestRun:
        """BPF_PROG_TEST_RUN on `packet`: the verdict, the packet as the program left it, and
        the kernel's average time per run. `live`: the frames go where the program sends them
        (its verdict and packet are then not reported)."""
        out = ffi.new("char[]", len(packet) + 256)
        out_len = ffi.new("uint32_t *", len(packet) + 256)
        verdict, duration = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        flags = lib.DP_TEST_LIVE_FRAMES if live else 0
        _checked(lib.dp_test_run(self.prog_fd(name), packet, len(packet), out, out_len, repeat, flags, verdict,
                                 duration), "test run")
        return TestRun(int(verdict[0]), b"" if live else ffi.buffer(out, out_len[0])[:], int(duration[0]))

    def close(self) -> None:
        if self._obj != ffi.NULL:
            lib.dp_close(self._obj)
            self._obj = ffi.NULL


def update(fd: int, key, value) -> None:
    """Write one element; key and value are cffi pointers or buffers of the map's sizes."""
    _checked(lib.dp_map_update(fd, key, value), "map update")


def lookup(fd: int, key, value) -> bool:
    """Read one element into `value`; False if the map has no such key."""
    rc = lib.dp_map_lookup(fd, key, value)
    if rc == -2:  # ENOENT
        return False
    _checked(rc, "map lookup")
    return True


def update_many(fd: int, keys: bytes, key_size: int, values: bytes | None, value_size: int) -> None:
    """Write (or, with values None, delete) every element of the packed arrays, in C."""
    count = len(keys) // key_size
    done = lib.dp_map_update_many(fd, keys, key_size, ffi.NULL if values is None else values, value_size, count)
    if done != count:
        raise BpfError(0, f"element {done} of {count}: {_said()}")


def attach(ifindex: int, prog_fd: int, mode: str, replace_id: int = 0) -> None:
    """Attach in `mode` ("native" or "generic"): only where no program is, or atomically in
    place of program `replace_id`."""
    _checked(lib.dp_attach(ifindex, prog_fd, MODES[mode], replace_id), f"attaching to interface {ifindex}")


def detach(ifindex: int, mode: str, prog_id: int) -> None:
    """Detach program `prog_id`, and nothing that replaced it meanwhile."""
    _checked(lib.dp_detach(ifindex, MODES[mode], prog_id), f"detaching from interface {ifindex}")


def query(ifindex: int) -> Attached:
    prog_id, mode = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    name = ffi.new("char[]", lib.DP_NAME_LEN)
    _checked(lib.dp_query(ifindex, prog_id, mode, name), f"interface {ifindex}")
    return Attached(int(prog_id[0]), ATTACHED.get(int(mode[0]), "unknown"), ffi.string(name).decode(errors="replace"))


def program_map_fd(prog_id: int, name: str) -> int:
    """A descriptor for a map of any loaded program (a crashed agent's, say); close it."""
    return _checked(lib.dp_prog_map_fd(prog_id, name.encode()), f"map {name} of program {prog_id}")


def close_fd(fd: int) -> None:
    lib.dp_close_fd(fd)


def possible_cpus() -> int:
    return _checked(lib.dp_possible_cpus(), "possible CPUs")


def btf_layout(path: Path, struct: str, member: str | None = None) -> tuple[int, int]:
    """(offset, size) the BPF compiler gave `struct` (offset 0) or its `member`, from BTF."""
    offset, size = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    _checked(lib.dp_btf_layout(str(path).encode(), struct.encode(), member.encode() if member else ffi.NULL,
                               offset, size), f"BTF of {struct}{'.' + member if member else ''}")
    return int(offset[0]), int(size[0])
