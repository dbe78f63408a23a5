"""`dpagent`: run the agent, or `dpagent check` a configuration without running it.

Exit status 2 means the configuration is invalid, in both cases, with one line per
error naming its key path and value.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvloop

from agent.config import DEFAULT_PATH, Config, ConfigInvalid, format_errors, load_config
from agent.runtime.control import ControlError

EXIT_CONFIG = 2
EXIT_RUNNING = 1


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


async def _run(config: Config) -> None:
    # Imported here so `dpagent check` works without the native build.
    from agent.runtime.daemon import Daemon

    await Daemon(config).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dpagent", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=str(DEFAULT_PATH), help="configuration file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every transition step")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "check"])
    parser.add_argument("path", nargs="?", help="configuration file for `check`")
    args = parser.parse_args(argv)
    path = args.path or args.config
    if args.command == "check":
        return check(path)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        config = load_config(path)
    except ConfigInvalid as exc:
        print(format_errors(path, exc.errors), file=sys.stderr)
        print("dpagent: refusing to start with an invalid configuration", file=sys.stderr)
        return EXIT_CONFIG
    try:
        uvloop.run(_run(config))
    except ControlError as exc:
        print(f"dpagent: {exc}", file=sys.stderr)
        return EXIT_RUNNING
    return 0


if __name__ == "__main__":
    sys.exit(main())
