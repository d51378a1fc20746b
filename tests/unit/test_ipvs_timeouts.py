"""IPVS timeouts without a kernel: what to send (plan), and the netlink attributes both ways.
The kernel test (tests/kernel/test_ipvs_timeouts_kernel.py) holds them to the real thing."""

from __future__ import annotations

import struct

import pytest

from lvsctl.core.model import IpvsTimeouts
from lvsctl.director.ipvs_timeouts import (
    apply_timeouts,
    decode_timeouts,
    encode_timeouts,
    plan_timeouts,
    timeouts_text,
)

KERNEL_DEFAULTS = IpvsTimeouts(900, 120, 300)

# (wanted, what the kernel has, what is sent)
PLAN = [
    (IpvsTimeouts(900, 120, 300), KERNEL_DEFAULTS, None),
    (IpvsTimeouts(600), KERNEL_DEFAULTS, IpvsTimeouts(600)),
    (IpvsTimeouts(600, 0, 30), KERNEL_DEFAULTS, IpvsTimeouts(600, 0, 30)),
    (IpvsTimeouts(900, 60, 300), KERNEL_DEFAULTS, IpvsTimeouts(0, 60, 0)),
    (IpvsTimeouts(), IpvsTimeouts(1, 1, 1), None),  # nothing configured: nothing sent
]


@pytest.mark.parametrize(("want", "have", "send"), PLAN)
def test_plan_sends_only_configured_values_that_differ(
    want: IpvsTimeouts, have: IpvsTimeouts, send: IpvsTimeouts | None
) -> None:
    assert plan_timeouts(want, have) == send


def test_attributes_are_u32_seconds_and_zero_is_left_out() -> None:
    data = encode_timeouts(IpvsTimeouts(tcp=900, udp=300))
    # (length 8, type 4 TIMEOUT_TCP, 900), (length 8, type 6 TIMEOUT_UDP, 300)
    assert data == struct.pack("=HHI", 8, 4, 900) + struct.pack("=HHI", 8, 6, 300)
    everything = encode_timeouts(IpvsTimeouts(1, 2, 3))
    assert decode_timeouts(everything) == IpvsTimeouts(1, 2, 3)
    # An attribute the kernel may add later is skipped.
    assert decode_timeouts(struct.pack("=HHI", 8, 9, 7) + everything) == IpvsTimeouts(1, 2, 3)
    assert timeouts_text(IpvsTimeouts(900, 0, 60)) == "tcp 900s udp 60s"


class KernelStandIn:
    """Holds three timeouts with the kernel's rule that 0 leaves a value unchanged."""

    def __init__(self) -> None:
        self.held = KERNEL_DEFAULTS
        self.sets: list[IpvsTimeouts] = []

    def observe(self) -> IpvsTimeouts:
        return self.held

    def set(self, timeouts: IpvsTimeouts) -> None:
        self.sets.append(timeouts)
        self.held = IpvsTimeouts(*(new or old for new, old in zip(
            (timeouts.tcp, timeouts.tcp_fin, timeouts.udp),
            (self.held.tcp, self.held.tcp_fin, self.held.udp), strict=True)))


def test_apply_writes_once_then_finds_nothing_to_do() -> None:
    kernel = KernelStandIn()
    assert apply_timeouts(kernel, IpvsTimeouts(tcp=600)) == IpvsTimeouts(tcp=600)
    assert kernel.held == IpvsTimeouts(600, 120, 300)
    assert apply_timeouts(kernel, IpvsTimeouts(tcp=600)) is None
    assert apply_timeouts(kernel, IpvsTimeouts()) is None
    assert kernel.sets == [IpvsTimeouts(tcp=600)]
