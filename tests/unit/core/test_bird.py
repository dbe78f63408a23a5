"""agent.core.bird: BIRD's control replies parse to facts or to a problem, whatever arrives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core import bird

SHOW_ALL = (
    b"2002-Name       Proto      Table      State  Since         Info\n"
    b"1002-device1    Device     ---        up     03:59:07.790  \n"
    b"1002-dpagent4   Kernel     master4    up     03:59:07.790  \n"
    b"1006-  Channel ipv4\n"
    b"     State:          UP\n"
    b"     Routes:         3 imported, 0 exported, 3 preferred\n"
    b" \n"
    b"1002-dpagent6   Kernel     master6    start  03:59:07.790  Waiting\n"
    b"1002-upstream   BGP        ---        up     03:59:09.001  Established   \n"
    b"0000 \n"
)


def read(data: bytes) -> list[tuple[int, str]]:
    reader = bird.ReplyReader()
    lines = None
    for i in range(len(data)):  # byte by byte: a reply may arrive in any pieces
        lines = reader.feed(data[i:i + 1]) or lines
    assert lines is not None
    return lines


def test_protocols_with_their_imported_routes():
    found = bird.protocols(read(SHOW_ALL))
    assert set(found) == {"device1", "dpagent4", "dpagent6", "upstream"}
    assert found["dpagent4"] == bird.Protocol("dpagent4", "Kernel", "master4", "up", "", 3)
    assert found["dpagent6"].state == "start" and found["dpagent6"].info == "Waiting"
    assert found["upstream"].info == "Established"


def test_plain_show_protocols_rows_are_continuations():
    data = (b"2002-Name       Proto      Table      State  Since         Info\n"
            b"1002-device1    Device     ---        up     03:59:07.790  \n"
            b" dpagent4   Kernel     master4    up     03:59:07.790  \n"
            b"0000 \n")
    assert bird.protocols(read(data))["dpagent4"].imported is None


def test_assess_names_every_problem():
    found = bird.protocols(read(SHOW_ALL))
    shown, problem = bird.assess(found, ("dpagent4", "dpagent6", "upstream", "gone"))
    assert shown["dpagent4"] == {"proto": "Kernel", "state": "up", "info": "", "imported": 3}
    assert shown["gone"] == {"state": "missing"}
    assert problem == ("dpagent6 is start (Waiting); upstream is a BGP protocol, not Kernel; no protocol gone")
    assert bird.assess(found, ("dpagent4",)) == ({"dpagent4": shown["dpagent4"]}, None)


def test_greeting_and_errors():
    assert bird.version(read(b"0001 BIRD 2.0.12 ready.\n")) == "2.0.12"
    assert bird.version(read(b"0001 something else\n")) is None
    lines = read(b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n")
    assert bird.error(lines) == "syntax error, unexpected CF_SYM_UNDEFINED"
    assert bird.error(read(SHOW_ALL)) is None


@pytest.mark.parametrize("data", [b"hello\n", b"12345 x\n", b"0001x\n", b"\xff\xfe\xfd\xfc \n", b"00a1 x\n"])
def test_what_is_not_a_reply_line_is_an_error(data: bytes):
    with pytest.raises(bird.ReplyError):
        bird.ReplyReader().feed(data)


def test_a_reply_without_end_is_bounded():
    reader = bird.ReplyReader()
    with pytest.raises(bird.ReplyError, match="longer than"):
        for _ in range(bird.MAX_REPLY_BYTES // 1000 + 2):
            reader.feed(b"1002-" + b"x" * 995 + b"\n")


def test_short_or_odd_rows_are_skipped():
    lines = read(b"1002-lonely\n1006-  Routes: many imported\n1002-k Kernel t up\n1006- Routes: 7 imported\n0000 \n")
    assert bird.protocols(lines) == {"k": bird.Protocol("k", "Kernel", "t", "up", "", 7)}


@given(st.binary(max_size=400))
def test_any_bytes_parse_or_raise_reply_error(data: bytes):
    reader = bird.ReplyReader()
    try:
        lines = reader.feed(data)
    except bird.ReplyError:
        return
    if lines is not None:
        bird.assess(bird.protocols(lines), ("dpagent4",))
        bird.version(lines)
        bird.error(lines)
