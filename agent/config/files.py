"""The configuration's only file I/O: regular files, their permission bits, classic lines.

Everything else in agent.config works on plain values, so the checks can be
tested without files. Only regular files are read, so that a FIFO or a device
named by mistake is an error instead of a hang, and never more of one than the
schema's MAX_FILE_BYTES.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from agent.config.schema import MAX_FILE_BYTES


def read_text(path: Path) -> tuple[int, str]:
    """A regular file's permission bits and its text; a UTF-8 byte-order mark is dropped
    and bad bytes never raise. Raises OSError, or ValueError for a NUL in the path."""
    # O_NONBLOCK so that a FIFO named by mistake fails the check below instead of hanging.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        # One byte past the cap tells a file that is too large, whatever its size said.
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES >> 20} MiB, the most read from one file")
    finally:
        os.close(fd)
    return stat.S_IMODE(info.st_mode), data.decode("utf-8-sig", "replace")


def classic_lines(content: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of the classic one-item-a-line format: `#` comments, any blank space, CRLF."""
    for number, line in enumerate(content.split("\n"), start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            yield number, text
