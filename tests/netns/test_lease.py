"""The kernel-side lease: a node whose agent died stops serving the block by itself.

Only the agent is SIGKILLed; its links stay up, its AnyIP routes stay in the
kernel and nothing runs `dpagent cleanup`. The gate's lease (one dead interval,
refreshed on every advert) runs out, and from then on the dead agent's node
answers no ARP and accepts no traffic for the block: exactly one MAC, the new
master's, answers.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from agent.lab import Lab

ASK = "198.18.77.7"

# Broadcast ARP requests for ASK from the client, every answer's sender MAC printed as JSON.
WHO_ANSWERS = f"""
import json
from scapy.all import ARP, Ether, conf, get_if_hwaddr, srp
conf.verb = 0
mac = get_if_hwaddr("ext0")
answered, _ = srp(Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / ARP(op=1, hwsrc=mac, psrc="203.0.113.10", pdst="{ASK}"),
                  iface="ext0", timeout=1.0, multi=True, retry=0)
print(json.dumps(sorted({{reply.hwsrc for _, reply in answered}})))
"""


def who_answers(lab: Lab, asks: int = 3) -> list[str]:
    """Every MAC that answered any of `asks` requests: one request now and then goes
    unanswered here even with a healthy holder, and one answer is enough to count."""
    macs: set[str] = set()
    for _ in range(asks):
        macs.update(json.loads(lab.exec("client", [sys.executable, "-c", WHO_ANSWERS]).stdout))
    return sorted(macs)


def test_a_sigkilled_agents_node_stops_answering_and_only_the_new_master_does(lab):
    lab.start_agent(1, lab.write_config(1))
    lab.wait_state(1, "MASTER")
    lab.start_agent(2, lab.write_config(2))
    lab.wait_master_seen(2, 1)
    fw1, fw2 = lab.mac("fw1", "ext0"), lab.mac("fw2", "ext0")
    deadline = time.monotonic() + 10
    while (answers := who_answers(lab)) != [fw1]:
        assert time.monotonic() < deadline, answers
    status = lab.status(1)
    assert status["gate"]["blocks"]["ext"]["open"]

    lab.kill_agent(1, signal.SIGKILL)
    lab.wait_state(2, "MASTER", timeout=10)
    # fw1's kernel still has the block's route: only the expired lease fences it.
    assert lab.holds_block(1)
    deadline = time.monotonic() + 10
    while (answers := who_answers(lab)) != [fw2]:
        assert time.monotonic() < deadline, f"answered by {answers} (fw1 {fw1}, fw2 {fw2})"
    # And it stays so.
    assert who_answers(lab) == [fw2]
    # Traffic too: every echo reply from across the block comes from fw2.
    probe = lab.start_probe(1.0)
    result = probe.finish()
    macs = {mac for _, _, mac in result["replies"]}
    assert macs == {fw2}, macs
