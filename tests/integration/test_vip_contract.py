"""One set of VIP-table rules, run against the kernel (KernelVips in a namespace) and against
the in-memory table the keeper's in-process tests use (tests/support/fake_vips.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from lvsctl.core.errors import KernelError
from lvsctl.core.model import Vip
from lvsctl.director.vip import KernelVips, Lease, StaleLease, VipTable
from lvsctl.testbed.netns import entered
from tests.support.fake_vips import FakeClock, FakeVips

pytestmark = pytest.mark.netns

V4 = Vip("192.0.2.10", "eth0")
V4_MOVED = Vip("192.0.2.10", "eth1")
V6 = Vip("2001:db8::10", "eth0")


@dataclass
class Subject:
    table: VipTable
    clock: Callable[[], float]  # the clock ``not_after`` is read on
    wait: Callable[[float], None]  # let time pass


@pytest.fixture(params=["kernel", "fake"])
def subject(request, lab) -> Iterator[Subject]:  # type: ignore[no-untyped-def]
    if request.param == "fake":
        clock = FakeClock(time.monotonic)
        yield Subject(FakeVips(clock), clock, clock.jump)
        return
    a, b = lab.netns("ca"), lab.netns("cb")
    lab.link(a, "192.0.2.2/24", b, "192.0.2.3/24", a_if="eth0", b_if="eth0")
    lab.link(a, "198.51.100.2/24", b, "198.51.100.3/24", a_if="eth1", b_if="eth1")
    with entered(a.name):
        vips = KernelVips()
        try:
            yield Subject(vips, time.monotonic, time.sleep)
        finally:
            vips.close()


def wait_until_gone(s: Subject, vip: Vip, limit: float) -> bool:
    for _ in range(int(limit / 0.05)):
        if not s.table.held((vip,)):
            return True
        s.wait(0.05)
    return False


def test_renew_adds_and_release_removes(subject: Subject) -> None:
    subject.table.renew(V4, Lease(5))
    subject.table.renew(V6, Lease(5))
    assert subject.table.held((V4, V6)) == {V4.address, V6.address}
    assert subject.table.release(V4) is True
    assert subject.table.release(V4) is False
    assert subject.table.held((V4, V6)) == {V6.address}


def test_a_renewal_past_its_deadline_is_not_sent(subject: Subject) -> None:
    with pytest.raises(StaleLease):
        subject.table.renew(V4, Lease(5), not_after=subject.clock() - 0.001)
    assert subject.table.held((V4,)) == frozenset()


def test_an_unrenewed_address_expires_by_itself(subject: Subject) -> None:
    subject.table.renew(V4, Lease(1))
    assert wait_until_gone(subject, V4, 4.0)


def test_the_key_is_address_and_interface(subject: Subject) -> None:
    subject.table.renew(V4, Lease(5))
    subject.table.renew(V4_MOVED, Lease(5))  # the same address on another interface: a copy
    assert subject.table.release(V4) is True
    assert subject.table.held((V4_MOVED,)) == {V4.address}  # the other copy stays
    assert subject.table.release(V4_MOVED) is True
    assert subject.table.held((V4,)) == frozenset()


def test_a_missing_interface_is_an_error(subject: Subject) -> None:
    with pytest.raises(KernelError):
        subject.table.renew(Vip("192.0.2.10", "nosuch0"), Lease(5))
    assert subject.table.release(Vip("192.0.2.10", "nosuch0")) is False
