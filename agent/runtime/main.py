"""`dpagent`: run the agent, `dpagent check` a configuration, `dpagent cleanup` after it.

Exit status 2 means the configuration is invalid, with one line per error naming
its key path and value; 1 that another agent holds the state directory or the
control socket; 4 that the agent stopped with something of its own still in the
kernel (a release that did not finish), so that systemd's Restart=on-failure
and ExecStopPost=dpagent cleanup run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvloop

from agent import manual
from agent.config import DEFAULT_PATH, Config, ConfigInvalid, NodeConfig, format_errors, load_config
from agent.runtime.control import ControlError
from agent.runtime.lock import LockHeld, acquire

EXIT_CONFIG = 2
EXIT_RUNNING = 1
EXIT_UNCLEAN = 4


def check(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigInvalid as exc:
        print(format_errors(path, exc.errors), file=sys.stderr)
        return EXIT_CONFIG
    total = sum(b.address_count for b in config.blocks)
    print(f"{path}: ok: node {config.node.id}, {len(config.heartbeat)} heartbeat link(s), "
          f"{len(config.blocks)} block(s), {total} addresses")
    return 0


async def _run(config: Config) -> bool:
    # Imported here so `dpagent check` works without the native build.
    from agent.runtime.daemon import Daemon

    return await Daemon(config).run()


def cleanup(path: str) -> int:
    """Remove everything of dpagent's from the kernel, unless a live agent holds the
    state directory: what ExecStopPost runs after every exit, SIGKILL included."""
    from agent.runtime.cleanup import remove_everything

    try:
        state_dir = load_config(path).node.state_dir
    except ConfigInvalid:
        state_dir = NodeConfig(id=1).state_dir
        print(f"dpagent: {path} is invalid; using the default state directory {state_dir}", file=sys.stderr)
    try:
        acquire(state_dir)
    except LockHeld as exc:
        print(f"dpagent cleanup: refused: {exc}", file=sys.stderr)
        return EXIT_RUNNING
    removed = asyncio.run(remove_everything())
    print(f"dpagent cleanup: removed {removed['applied']} leftover(s)"
          + (f", errors {removed['errors']}" if removed["errors"] else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """dpagent's command line, with agent.manual's text: what `--help` and the man page show."""
    parser = argparse.ArgumentParser(prog="dpagent", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=str(DEFAULT_PATH), help="configuration file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every transition step")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "check", "cleanup"],
                        help="what to do (default run)")
    parser.add_argument("path", nargs="?", help="configuration file for check (default: --config's)")
    return manual.apply(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.path or args.config
    if args.command == "check":
        return check(path)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.command == "cleanup":
        return cleanup(path)
    try:
        config = load_config(path)
    except ConfigInvalid as exc:
        print(format_errors(path, exc.errors), file=sys.stderr)
        print("dpagent: refusing to start with an invalid configuration", file=sys.stderr)
        return EXIT_CONFIG
    # A worker thread holding the GIL must hand it to the real-time loop within 1 ms
    # (Python's default is 5 ms): the loop refreshes the gate's lease on every advert.
    sys.setswitchinterval(0.001)
    try:
        # Before anything touches the kernel or the state directory's files.
        acquire(config.node.state_dir)
        clean = uvloop.run(_run(config))
    except (ControlError, LockHeld) as exc:
        print(f"dpagent: {exc}", file=sys.stderr)
        return EXIT_RUNNING
    return 0 if clean else EXIT_UNCLEAN


if __name__ == "__main__":
    sys.exit(main())
