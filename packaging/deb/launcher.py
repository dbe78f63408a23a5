#!/usr/bin/python3 -I
"""COMMAND as the dpagent package installs it. The agent's code, its native modules and the
Python modules vendored with it live in ../lib/dpagent, found from this file's own place, so
that a tree installed below another root (dpkg --root) runs as it would in /."""

import sys
from pathlib import Path

lib = Path(__file__).resolve().parent.parent / "lib" / "dpagent"
sys.path[:0] = [str(lib), str(lib / "vendor")]

from MODULE import main  # noqa: E402

sys.exit(main())
