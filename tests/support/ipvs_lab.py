"""A small LVS-NAT lab in network namespaces, for the kernel tests of the IPVS dataplane.

    client (192.0.2.100) --- director (192.0.2.1, VIP 192.0.2.10; 10.0.1.1 on a bridge)
                                  |-- r1 10.0.1.11:8080
                                  `-- r2 10.0.1.12:8080

Each real server runs SERVER: it answers every line of every connection with its own name,
so a test sees which real server carries a connection. ``Client`` holds one TCP connection
open through the VIP and is driven line by line over its stdin/stdout.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from tests.support.netns import Lab, Netns

VIP = "192.0.2.10"
PORT = 80
RS_PORT = 8080

SERVER = r"""
import socket, sys, threading
name = sys.argv[1]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[2])))
srv.listen(16)
print("ready", flush=True)
def serve(conn):
    with conn, conn.makefile("rwb") as f:
        for line in f:
            f.write(name.encode() + b"\n")
            f.flush()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

CLIENT = r"""
import socket, struct, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
f = sock.makefile("rwb")
for cmd in sys.stdin:
    if cmd.strip() == "send":
        f.write(b"hello\n"); f.flush()
        print(f.readline().decode().strip(), flush=True)
    elif cmd.strip() == "reset":
        # RST instead of FIN: the kernel's entry then expires in 10 s (CLOSE), not 120 s
        # (TIME_WAIT), so a test can wait for a drained dest's connections to reach 0.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        print("closed", flush=True)
        break
"""


@dataclass
class NatLab:
    lab: Lab
    client: Netns
    director: Netns
    realservers: dict[str, Netns]  # name -> namespace; the address is ADDRESSES[name]


ADDRESSES = {"r1": "10.0.1.11", "r2": "10.0.1.12"}


def nat_lab(lab: Lab, servers: bool = True) -> NatLab:
    client = lab.netns("cl")
    director = lab.netns("dr")
    lab.link(client, "192.0.2.100/24", director, "192.0.2.1/24")
    director.ip("addr", "add", f"{VIP}/32", "dev", "eth0")
    director.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    bridge = lab.bridge(director)
    director.ip("addr", "add", "10.0.1.1/24", "dev", bridge)
    realservers = {}
    for name, address in ADDRESSES.items():
        ns = lab.netns(name)
        lab.attach(ns, f"{address}/24", director, bridge, "eth0")
        ns.ip("route", "add", "default", "via", "10.0.1.1")
        realservers[name] = ns
        if servers:
            proc = lab.start(ns, [sys.executable, "-c", SERVER, name, str(RS_PORT)],
                             stdout=subprocess.PIPE)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
    return NatLab(lab, client, director, realservers)


class Client:
    """One TCP connection to the VIP from the client namespace, held open until reset()."""

    def __init__(self, nat: NatLab) -> None:
        self.proc = nat.lab.start(
            nat.client, [sys.executable, "-c", CLIENT, VIP, str(PORT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def _say(self, cmd: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{cmd}\n".encode())
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def send(self) -> str:
        """Send a line; the name of the real server that answered."""
        return self._say("send")

    def reset(self) -> None:
        assert self._say("reset") == "closed"
        self.proc.wait(timeout=30)
