"""agent.core.buckets: the kernel's jhash and nft's bucket of a flow, bit for bit.

Three independent references: Bob Jenkins' published lookup3 values (the
kernel's jhash is his hashlittle), marks the kernel itself computed
(tests/netns/test_bucket_parity.py checks 10,000 flows per family there; a few
are pinned here so that a change shows without root), and a C rendering of
include/linux/jhash.h compiled at test time and fed random keys.
"""

from __future__ import annotations

import collections
import random
import shutil
import subprocess
import sys
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from agent.core.buckets import PORT_PROTOCOLS, HashFields, bucket, flow_fields, hash_key, jhash

FULL = 0xFFFFFFFF
little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="keys over 12 bytes hash differently on big-endian CPUs, as in the kernel")


@little_endian_only
@pytest.mark.parametrize(("data", "seed", "expected"), [
    # lookup3.c's driver5(): hashlittle("", 0, 0) and the "Four score" lines.
    (b"", 0, 0xDEADBEEF),
    (b"Four score and seven years ago", 0, 0x17770551),
    (b"Four score and seven years ago", 1, 0xCD628161),
])
def test_jhash_is_lookup3_hashlittle(data: bytes, seed: int, expected: int) -> None:
    assert jhash(data, seed) == expected


# Marks that Linux 6.18 (nftables 1.0.6) set with `meta mark set jhash <fields> mod M
# seed S offset O` at netdev ingress. With M = 2**32 - 1 the mark is the whole hash less one.
KERNEL_MARKS = [
    (HashFields.SOURCE, "198.51.100.7", 0, 65535, FULL, 0xDEADBEEF, 0, 2311273732),
    (HashFields.SOURCE, "203.0.113.200", 40000, 443, FULL, 0xDEADBEEF, 0, 1163437617),
    (HashFields.SOURCE_PORT, "198.51.100.7", 0, 65535, FULL, 0x1, 0, 1944265113),
    (HashFields.SOURCE_PORT, "203.0.113.200", 40000, 443, FULL, 0x1, 0, 3381650911),
    (HashFields.SOURCE_PORTS, "198.51.100.7", 0, 65535, FULL, 0x80000000, 0, 3384820364),
    (HashFields.SOURCE_PORTS, "203.0.113.200", 40000, 443, FULL, 0x80000000, 0, 3297317733),
    (HashFields.SOURCE_PORTS, "203.0.113.200", 40000, 443, 1000, 0, 7, 327),
    (HashFields.SOURCE, "2001:db8::1", 65535, 0, FULL, 0xDEADBEEF, 0, 4191943213),
    (HashFields.SOURCE, "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe", 51234, 80, FULL, 0xDEADBEEF, 0, 1912199670),
    (HashFields.SOURCE_PORT, "2001:db8::1", 65535, 0, FULL, 0x1, 0, 4097353288),
    (HashFields.SOURCE_PORT, "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe", 51234, 80, FULL, 0x1, 0, 1110758877),
    (HashFields.SOURCE_PORTS, "2001:db8::1", 65535, 0, FULL, 0x80000000, 0, 766414585),
    (HashFields.SOURCE_PORTS, "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe", 51234, 80, FULL, 0x80000000, 0, 931937143),
    (HashFields.SOURCE_PORTS, "2001:db8::1", 65535, 0, 1000, 0, 7, 602),
]


@little_endian_only
@pytest.mark.parametrize(("fields", "src", "sport", "dport", "modulus", "seed", "offset", "mark"), KERNEL_MARKS)
def test_bucket_matches_marks_the_kernel_set(fields: HashFields, src: str, sport: int, dport: int, modulus: int,
                                             seed: int, offset: int, mark: int) -> None:
    assert bucket(fields, ip_address(src), sport, dport, modulus, seed, offset) == mark


# The kernel's jhash() in C, written from include/linux/jhash.h: whole blocks
# read in CPU byte order, the last 1..12 bytes little-endian, no final mix for
# an empty key. Reads "<seed hex> <key hex>" lines, prints the hash of each.
JHASH_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static uint32_t rol(uint32_t x, unsigned k) { return (x << k) | (x >> (32 - k)); }

static uint32_t kernel_jhash(const uint8_t *k, uint32_t len, uint32_t seed)
{
	uint32_t a, b, c, w[3] = {0, 0, 0};
	uint32_t i;

	a = b = c = 0xdeadbeef + len + seed;
	for (; len > 12; len -= 12, k += 12) {
		memcpy(w, k, 12);
		a += w[0]; b += w[1]; c += w[2];
		a -= c; a ^= rol(c, 4);  c += b;
		b -= a; b ^= rol(a, 6);  a += c;
		c -= b; c ^= rol(b, 8);  b += a;
		a -= c; a ^= rol(c, 16); c += b;
		b -= a; b ^= rol(a, 19); a += c;
		c -= b; c ^= rol(b, 4);  b += a;
	}
	if (len == 0)
		return c;
	for (i = 0; i < len; i++) {
		uint32_t byte = (uint32_t)k[i] << (8 * (i % 4));
		if (i < 4) a += byte; else if (i < 8) b += byte; else c += byte;
	}
	c ^= b; c -= rol(b, 14);
	a ^= c; a -= rol(c, 11);
	b ^= a; b -= rol(a, 25);
	c ^= b; c -= rol(b, 16);
	a ^= c; a -= rol(c, 4);
	b ^= a; b -= rol(a, 14);
	c ^= b; c -= rol(b, 24);
	return c;
}

int main(void)
{
	char hex[1024];
	unsigned seed;
	uint8_t key[512];

	while (scanf("%x %1023s", &seed, hex) == 2) {
		size_t n = strcmp(hex, "-") ? strlen(hex) / 2 : 0;
		for (size_t i = 0; i < n; i++)
			sscanf(hex + 2 * i, "%2hhx", &key[i]);
		printf("%u\n", kernel_jhash(key, (uint32_t)n, seed));
	}
	return 0;
}
"""


@pytest.fixture(scope="module")
def c_jhash(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to build the C reference")
    where = tmp_path_factory.mktemp("jhash")
    (where / "jhash.c").write_text(JHASH_C)
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", str(where / "jhash"), str(where / "jhash.c")], check=True)
    return where / "jhash"


def test_jhash_matches_the_c_reference_on_random_keys(c_jhash: Path) -> None:
    rng = random.Random(0x1A5)
    # Every length around the 12-byte block edges, plus the key sizes nft uses.
    lengths = list(range(41)) * 40 + [4, 8, 12, 16, 20, 24] * 200
    cases = [(rng.getrandbits(32), rng.randbytes(length)) for length in lengths]
    cases += [(0, b""), (FULL, b"\xff" * 24), (FULL, b"\0" * 13)]
    lines = "".join(f"{seed:x} {data.hex() or '-'}\n" for seed, data in cases)
    out = subprocess.run([str(c_jhash)], input=lines, capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == len(cases)
    wrong = [(seed, data.hex(), int(c)) for (seed, data), c in zip(cases, out) if jhash(data, seed) != int(c)]
    assert not wrong, wrong[:5]


@pytest.mark.parametrize(("fields", "src", "expected"), [
    (HashFields.SOURCE, "192.0.2.1", "c0000201"),
    (HashFields.SOURCE_PORT, "192.0.2.1", "c0000201" "1234" "0000"),
    (HashFields.SOURCE_PORTS, "192.0.2.1", "c0000201" "1234" "0000" "0050" "0000"),
    (HashFields.SOURCE, "2001:db8::1", "20010db8000000000000000000000001"),
    (HashFields.SOURCE_PORTS, "2001:db8::1", "20010db8000000000000000000000001" "1234" "0000" "0050" "0000"),
])
def test_the_key_is_nfts_register_layout(fields: HashFields, src: str, expected: str) -> None:
    """One field per 32-bit register, network byte order, a port zero-padded to 4 bytes."""
    assert hash_key(fields, ip_address(src), 0x1234, 80).hex() == expected


def test_source_only_ignores_the_ports() -> None:
    src = IPv4Address("198.51.100.9")
    assert bucket(HashFields.SOURCE, src, None, None, 256, 7) == bucket(HashFields.SOURCE, src, 1, 2, 256, 7)


def test_the_bucket_is_the_high_bits_scaled_plus_offset() -> None:
    key_fields = (HashFields.SOURCE_PORTS, IPv6Address("2001:db8::42"), 1024, 443)
    h = jhash(hash_key(*key_fields), 99)
    assert bucket(*key_fields, 3, 99, 10) == (h * 3 >> 32) + 10
    assert bucket(*key_fields, FULL, 99) == max(h - 1, 0)


def random_flows(count: int, rng: random.Random, v6: bool) -> list[tuple[IPv4Address | IPv6Address, int, int]]:
    """Sources in 2001:db8::/32 or 198.18.0.0/15, any ports."""
    def source() -> IPv4Address | IPv6Address:
        if v6:
            return IPv6Address(0x20010DB8 << 96 | rng.getrandbits(96))
        return IPv4Address(0xC6120000 | rng.getrandbits(17))
    return [(source(), rng.randrange(65536), rng.randrange(65536)) for _ in range(count)]


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("fields", list(HashFields))
@pytest.mark.parametrize("modulus", [2, 3, 256, 1000, FULL])
def test_buckets_stay_in_range_and_are_deterministic(fields: HashFields, modulus: int, v6: bool) -> None:
    flows = random_flows(300, random.Random(modulus), v6)
    first = [bucket(fields, *flow, modulus, 0x5EED) for flow in flows]
    assert all(0 <= b < modulus for b in first)
    assert first == [bucket(fields, *flow, modulus, 0x5EED) for flow in flows]
    assert all(1 <= b <= modulus for b in (bucket(fields, *flow, modulus, 0x5EED, 1) for flow in flows))


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("fields", list(HashFields))
def test_10000_sources_spread_over_256_buckets(fields: HashFields, v6: bool) -> None:
    # 39 flows a bucket on average (sd about 6): a bucket outside 10..80 means a broken hash.
    flows = random_flows(10_000, random.Random(f"{fields}-{v6}"), v6)
    counts = collections.Counter(bucket(fields, *flow, 256, 0xC0FFEE) for flow in flows)
    assert len(counts) == 256
    assert 10 <= min(counts.values()) and max(counts.values()) <= 80, counts.most_common(3)


@pytest.mark.parametrize(("args", "message"), [
    ((HashFields.SOURCE_PORT, IPv4Address("192.0.2.1"), None, None, 256, 0), "sport"),
    ((HashFields.SOURCE_PORTS, IPv4Address("192.0.2.1"), 80, None, 256, 0), "dport"),
    ((HashFields.SOURCE_PORTS, IPv4Address("192.0.2.1"), 80, 65536, 256, 0), "dport"),
    ((HashFields.SOURCE, IPv4Address("192.0.2.1"), None, None, 0, 0), "buckets"),
    ((HashFields.SOURCE, IPv4Address("192.0.2.1"), None, None, 256, 1 << 32), "seed"),
])
def test_bad_arguments_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bucket(*args)


@pytest.mark.parametrize("fields", list(HashFields))
@pytest.mark.parametrize("fragment", [False, True])
def test_ports_count_only_for_tcp_and_udp_that_are_no_fragments(fields: HashFields, fragment: bool) -> None:
    assert PORT_PROTOCOLS == {6, 17}
    for protocol in range(256):
        expected = fields if protocol in (6, 17) and not fragment else HashFields.SOURCE
        assert flow_fields(fields, protocol, fragment) is expected, protocol


def test_every_fragment_of_a_datagram_lands_in_the_bucket_of_its_source() -> None:
    """The first fragment has ports, the rest none: both go by the source alone."""
    src = IPv6Address("2001:db8::77")
    whole = bucket(HashFields.SOURCE, src, None, None, 1000, 0x5EED)
    first = bucket(flow_fields(HashFields.SOURCE_PORTS, 17, True), src, 5353, 53, 1000, 0x5EED)
    rest = bucket(flow_fields(HashFields.SOURCE_PORTS, 17, True), src, None, None, 1000, 0x5EED)
    assert first == rest == whole
    # One ping session is one bucket, whatever its checksums (where `th dport` would read).
    pings = {bucket(flow_fields(HashFields.SOURCE_PORTS, 1, False), src, 0x0800, checksum, 1000, 0x5EED)
             for checksum in range(0, 65536, 257)}
    assert pings == {whole}


@pytest.mark.parametrize(("args", "message"), [
    ((HashFields.SOURCE_PORTS, -1, False), "protocol"),
    ((HashFields.SOURCE_PORTS, 256, False), "protocol"),
    ((HashFields.SOURCE_PORTS, None, False), "protocol"),
    ((HashFields.SOURCE_PORTS, "6", False), "protocol"),
    ((HashFields.SOURCE_PORTS, True, False), "protocol"),
    ((HashFields.SOURCE_PORTS, 6, 0), "fragment"),
    ((HashFields.SOURCE_PORTS, 6, None), "fragment"),
    (("sourceip", 6, False), "fields"),
])
def test_bad_flow_fields_arguments_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        flow_fields(*args)
