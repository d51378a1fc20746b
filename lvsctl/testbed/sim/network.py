"""The simulated peer link's network: UDP datagrams between the directors' hosts with delay,
loss, reordering (each datagram draws its own delay) and cuts, delivered to whatever socket is
bound at the destination address when they arrive (none after a crash: they are lost)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lvsctl.testbed.sim.clock import Agenda


@dataclass
class PeerNetwork:
    agenda: Agenda
    rng: random.Random
    loss: float = 0.0
    delay: tuple[float, float] = (0.0002, 0.002)
    cut_until: float = -1.0  # every datagram is lost before this instant
    endpoints: dict[tuple[str, int], SimDatagramTransport] = field(default_factory=dict)
    sent: int = 0
    lost: int = 0

    def send(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        self.sent += 1
        if self.agenda.now < self.cut_until or self.rng.random() < self.loss:
            self.lost += 1
            return

        def arrive() -> None:
            if self.agenda.now < self.cut_until:
                self.lost += 1
                return
            endpoint = self.endpoints.get(dst)
            if endpoint is not None and not endpoint.closed:
                endpoint.receive(data, src)

        self.agenda.after(self.rng.uniform(*self.delay), arrive)


class SimDatagramTransport(asyncio.DatagramTransport):
    """What ``loop.create_datagram_endpoint`` returns on a simulated host."""

    def __init__(self, network: PeerNetwork, address: tuple[str, int],
                 protocol: asyncio.DatagramProtocol,
                 deliver: Callable[[Callable[[], None]], None]) -> None:
        super().__init__()
        self.network = network
        self.address = address
        self.protocol = protocol
        self.deliver = deliver  # hands a datagram to the owning process's loop
        self.closed = False
        network.endpoints[address] = self

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self.closed:
            self.network.send(bytes(data), self.address, tuple(addr))

    def receive(self, data: bytes, src: tuple[str, int]) -> None:
        self.deliver(lambda: self.protocol.datagram_received(data, src))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.address if name == "sockname" else default

    def close(self) -> None:
        self.closed = True
        if self.network.endpoints.get(self.address) is self:
            del self.network.endpoints[self.address]

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.close()
