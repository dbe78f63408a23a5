"""The struct-packed rtnetlink messages are byte for byte what pyroute2 encodes, and the
Batcher names each item the kernel refused by the sequence number of its message.

No kernel here: the Batcher's socket is a fake that answers like rtnetlink (one
NLMSG_ERROR per refused message, carrying the message back), so these tests run
without root and change nothing on the host.
"""

import errno
import socket
import struct
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from agent.dataplane import nlbatch
from agent.dataplane.nlbatch import (
    NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR, RTM_DELROUTE, RTM_NEWADDR, RTM_NEWROUTE,
    Batcher, interface_address, local_route, table_route,
)

NLMSGHDR = struct.Struct("=IHHII")
NLM_F_ACK = 0x004
PROTO = 99
U32 = st.integers(1, 2**32 - 1)

NETWORKS = st.one_of(
    st.builds(lambda a, n: ip_network((a, n), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda a, n: ip_network((a, n), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 128)),
)
ADDRESSES = st.one_of(st.builds(ip_address, st.integers(0, 2**32 - 1)),
                      st.builds(lambda a: ip_address(a.to_bytes(16, "big")), st.integers(0, 2**128 - 1)))


def pyroute2_body(msg) -> bytes:
    """What pyroute2 puts after the 16-byte netlink header."""
    msg.encode()
    return bytes(msg.data[NLMSGHDR.size:])


def decoded(cls, msg_type: int, body: bytes):
    """Our body behind a netlink header, parsed by pyroute2."""
    msg = cls(NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST, 1, 0) + body)
    msg.decode()
    return msg


def attrs(msg) -> list[tuple[str, object]]:
    return [(nla[0], nla[1]) for nla in msg["attrs"]]


# -- encoders -------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(NETWORKS, st.integers(0, 255), U32)
def test_local_route_is_what_pyroute2_encodes(network, proto, oif):
    msg = rtmsg()
    msg.update(family=socket.AF_INET if network.version == 4 else socket.AF_INET6,
               dst_len=network.prefixlen, table=255, proto=proto, scope=254, type=2)
    msg["attrs"] = [("RTA_DST", str(network.network_address)), ("RTA_OIF", oif)]
    assert local_route(network, proto, oif) == pyroute2_body(msg)


@settings(max_examples=300, deadline=None)
@given(ADDRESSES, st.integers(0, 255), U32)
def test_interface_address_is_what_pyroute2_encodes(address, proto, index):
    msg = ifaddrmsg()
    msg.update(family=socket.AF_INET if address.version == 4 else socket.AF_INET6,
               prefixlen=address.max_prefixlen, index=index)
    msg["attrs"] = [("IFA_LOCAL", str(address)), ("IFA_ADDRESS", str(address)),
                    ("IFA_FLAGS", 0x02), ("IFA_PROTO", proto)]
    assert interface_address(address, proto, index) == pyroute2_body(msg)


@settings(max_examples=300, deadline=None)
@given(NETWORKS, st.integers(0, 255), st.integers(1, 2**32 - 1))
def test_table_route_is_what_pyroute2_encodes(network, proto, table):
    msg = rtmsg()
    msg.update(family=socket.AF_INET if network.version == 4 else socket.AF_INET6,
               dst_len=network.prefixlen, table=table if table < 256 else 0, proto=proto, scope=0, type=7)
    msg["attrs"] = [("RTA_DST", str(network.network_address)), ("RTA_TABLE", table)]
    assert table_route(network, proto, table) == pyroute2_body(msg)


@pytest.mark.parametrize("network, family", [
    (ip_network("198.18.4.0/22"), socket.AF_INET),
    (ip_network("2001:db8::/116"), socket.AF_INET6),
])
def test_local_route_says_local_route_in_the_local_table(network, family):
    """`ip route add local NETWORK dev 7 table local proto 99`, field by field."""
    msg = decoded(rtmsg, RTM_NEWROUTE, local_route(network, PROTO, 7))
    assert (msg["family"], msg["dst_len"], msg["src_len"], msg["tos"]) == (family, network.prefixlen, 0, 0)
    assert (msg["table"], msg["proto"], msg["scope"], msg["type"], msg["flags"]) == (
        255, PROTO, 254, 2, 0)  # local table, our proto, scope host, type local
    assert attrs(msg) == [("RTA_DST", str(network.network_address)), ("RTA_OIF", 7)]


@pytest.mark.parametrize("address, family", [
    (ip_address("198.18.0.9"), socket.AF_INET),
    (ip_address("2001:db8::9"), socket.AF_INET6),
])
def test_interface_address_is_a_host_address_without_dad(address, family):
    """`ip addr add ADDRESS/32 (or /128) dev 7 proto 99 nodad`, field by field."""
    msg = decoded(ifaddrmsg, RTM_NEWADDR, interface_address(address, PROTO, 7))
    assert (msg["family"], msg["prefixlen"], msg["flags"], msg["scope"], msg["index"]) == (
        family, address.max_prefixlen, 0, 0, 7)
    assert attrs(msg) == [("IFA_LOCAL", str(address)), ("IFA_ADDRESS", str(address)),
                            ("IFA_FLAGS", 0x02), ("IFA_PROTO", PROTO)]


# -- Batcher ----------------------------------------------------------------------

class FakeRtnetlink:
    """A NETLINK_ROUTE socket whose kernel refuses the messages named in `refuse`
    (their 0-based position in everything sent) with an errno, as rtnetlink does:
    one NLMSG_ERROR per refusal, naming the message's sequence number and carrying
    it back, queued before send() returns. Errno 0 is an acknowledgement. With
    `one_datagram`, a send's errors come in one read."""

    def __init__(self, refuse: dict[int, int], one_datagram: bool = False) -> None:
        self.refuse = refuse
        self.one_datagram = one_datagram
        self.sends: list[list[tuple[int, int, int, bytes]]] = []
        self.queue: list[bytes] = []
        self.closed = False
        self._count = 0

    def setsockopt(self, *args: object) -> None:
        pass

    def bind(self, address: tuple[int, int]) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def send(self, data: bytes) -> int:
        messages, errors, offset = [], [], 0
        while offset < len(data):
            length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
            messages.append((kind, flags, seq, data[offset + NLMSGHDR.size:offset + length]))
            if self._count in self.refuse:
                errors.append(self._error(data[offset:offset + length], seq, self.refuse[self._count]))
            self._count += 1
            offset += length
        assert offset == len(data)
        self.sends.append(messages)
        self.queue += [b"".join(errors)] if self.one_datagram and errors else errors
        return len(data)

    @staticmethod
    def _error(message: bytes, seq: int, code: int) -> bytes:
        payload = struct.pack("=i", -code) + message
        return NLMSGHDR.pack(NLMSGHDR.size + len(payload), NLMSG_ERROR, 0, seq, 4242) + payload

    def recv(self, size: int, flags: int) -> bytes:
        assert flags & socket.MSG_DONTWAIT
        if not self.queue:
            raise BlockingIOError
        return self.queue.pop(0)


@pytest.fixture
def kernel_with(monkeypatch: pytest.MonkeyPatch):
    """Batcher sockets become FakeRtnetlink(refuse, one_datagram)."""
    def install(refuse: dict[int, int], one_datagram: bool = False) -> FakeRtnetlink:
        fake = FakeRtnetlink(refuse, one_datagram)
        monkeypatch.setattr(nlbatch.socket, "socket", lambda *args: fake)
        return fake
    return install


def items(count: int) -> list[tuple[str, bytes]]:
    return [(f"198.18.0.{i}/32", local_route(ip_network(f"198.18.0.{i}/32"), PROTO, 7))
            for i in range(count)]


def test_failures_are_named_by_the_item_whose_sequence_number_the_kernel_gives(kernel_with):
    kernel = kernel_with({1: errno.EEXIST, 5: errno.EEXIST, 6: errno.ENODEV})
    batch = items(8)
    result = Batcher().apply(RTM_NEWROUTE, batch, per_send=3)
    assert [len(sent) for sent in kernel.sends] == [3, 3, 2]
    assert result.applied == 5
    assert result.failed == {"EEXIST": [batch[1][0], batch[5][0]], "ENODEV": [batch[6][0]]}
    sent = [m for chunk in kernel.sends for m in chunk]
    assert [body for _, _, _, body in sent] == [body for _, body in batch]
    assert [seq for _, _, seq, _ in sent] == list(range(1, 9))


def test_errors_read_in_one_datagram_are_all_counted(kernel_with):
    kernel_with({0: errno.EEXIST, 2: errno.EPERM, 3: errno.EEXIST}, one_datagram=True)
    batch = items(4)
    result = Batcher().apply(RTM_NEWROUTE, batch)
    assert result.applied == 1
    assert result.failed == {"EEXIST": [batch[0][0], batch[3][0]], "EPERM": [batch[2][0]]}


def test_sequence_numbers_wrap_at_32_bits_and_still_name_the_item(kernel_with):
    kernel = kernel_with({1: errno.EEXIST, 3: errno.EEXIST})
    batcher = Batcher()
    batcher._seq = 2**32 - 2  # as after four billion messages
    batch = items(4)
    result = batcher.apply(RTM_NEWROUTE, batch)
    assert [seq for _, _, seq, _ in kernel.sends[0]] == [2**32 - 1, 0, 1, 2]
    assert result.failed == {"EEXIST": [batch[1][0], batch[3][0]]}


def test_an_acknowledgement_is_not_a_failure(kernel_with):
    kernel_with({0: 0, 1: errno.EEXIST, 2: 0})
    batch = items(3)
    result = Batcher().apply(RTM_NEWROUTE, batch)
    assert (result.applied, result.failed) == (2, {"EEXIST": [batch[1][0]]})


def test_an_errno_without_a_name_is_reported_by_number(kernel_with):
    kernel_with({0: 4000})
    assert Batcher().apply(RTM_NEWROUTE, items(1)).failed == {"4000": [items(1)[0][0]]}


@pytest.mark.parametrize("msg_type, flags", [
    (RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL),
    (RTM_NEWADDR, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL),
    (RTM_DELROUTE, NLM_F_REQUEST),
])
def test_messages_ask_for_no_ack_and_create_only_what_is_new(kernel_with, msg_type, flags):
    """Without NLM_F_ACK the kernel writes back only failures; EXCL makes an existing
    route a failure (EEXIST) rather than a silent success."""
    kernel = kernel_with({})
    result = Batcher().apply(msg_type, items(3))
    assert (result.applied, result.failed) == (3, {})
    assert {(kind, f) for kind, f, _, _ in kernel.sends[0]} == {(msg_type, flags)}
    assert not flags & NLM_F_ACK


def test_close_closes_the_socket(kernel_with):
    kernel = kernel_with({})
    Batcher().close()
    assert kernel.closed
