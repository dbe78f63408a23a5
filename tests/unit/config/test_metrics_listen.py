"""[metrics] listen: off by default, ADDRESS:PORT when given, never on a block's or a heartbeat's address."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from config_documents import minimal, one_error, write


def with_listen(listen: str) -> dict:
    return minimal() | {"metrics": {"listen": listen}}


def test_off_unless_given_and_parsed_for_both_ip_versions(workdir: Path) -> None:
    assert load_config(write(workdir, minimal())).metrics_listen is None
    assert load_config(write(workdir, with_listen("127.0.0.1:9412"))).metrics_listen == ("127.0.0.1", 9412)
    assert load_config(write(workdir, with_listen("[::1]:9412"))).metrics_listen == ("::1", 9412)


@pytest.mark.parametrize("listen", ["9412", "localhost:9412", "127.0.0.1:0", "127.0.0.1:70000", "::1:9412"])
def test_a_listen_that_is_not_address_and_port_is_refused(workdir: Path, listen: str) -> None:
    assert one_error(workdir, with_listen(listen)) == (
        f'DIR/dpagent.toml: metrics.listen = "{listen}": must be ADDRESS:PORT, e.g. "127.0.0.1:9412" or "[::1]:9412"')


@pytest.mark.parametrize("listen", ["192.0.2.10:9412", "224.0.0.18:9412"])
def test_never_on_a_block_or_heartbeat_address(workdir: Path, listen: str) -> None:
    assert one_error(workdir, with_listen(listen)) == (
        f'DIR/dpagent.toml: metrics.listen = "{listen}": is an address of a block or a heartbeat link: '
        "metrics must not listen there")
