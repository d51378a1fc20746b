"""The lab's plan, pure data: its addresses, hosts and services, the cluster and node files
it generates, and what a director's IPVS table must list once every real server is healthy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FRONT, INSIDE = "10.77.0", "10.77.1"
ZK_ADDR = f"{FRONT}.100"
CLIENT_ADDR = f"{FRONT}.50"
INSIDE_VIP = f"{INSIDE}.1"
API_PORT = 9180
PEER_PORT = 7946
HTTP_PORT = 80
PROMETHEUS_PORT = 9090  # in the client's namespace
PROMETHEUS_JOB = "lvsctl-lab"
# Every 5 s: each scrape costs both directors a snapshot and a render, and the VM's CPU is
# emulated (on a loaded host its checks already run late).
SCRAPE_INTERVAL = 5.0
SESSION = 6.0  # ZooKeeper session (s): short enough for a quick crash takeover, long enough
#               for the directors to stay confirmed under the VM's emulated CPU
# Checks every second: each check costs CPU in both directors, and the VM's CPU is emulated.
CHECK = {"interval": 1.0, "timeout": 0.5, "rise": 2, "fall": 2}
ZK_AUTH = "lvsctl:lab-password"


@dataclass(frozen=True)
class Port:
    """One interface of a host: a veth whose other end is on a bridge in the switch ns."""

    bridge: str  # "front" or "inside"
    ifname: str  # inside the host's namespace
    address: str  # with prefix length


@dataclass(frozen=True)
class Host:
    role: str  # zk, lb1, lb2, nat1, ..., client
    ports: tuple[Port, ...]
    gateway: str | None = None  # a default route the lab sets (not for real servers)


@dataclass(frozen=True)
class LabService:
    name: str
    mode: str  # nat, dr, tun
    vip: str
    realservers: tuple[tuple[str, str], ...]  # (name, address)
    port: int = 80


SERVICES = (
    LabService("web-nat", "nat", f"{FRONT}.10",
               (("nat1", f"{INSIDE}.21"), ("nat2", f"{INSIDE}.22"))),
    LabService("web-dr", "dr", f"{FRONT}.11", (("dr1", f"{FRONT}.21"), ("dr2", f"{FRONT}.22"))),
    LabService("web-tun", "tun", f"{FRONT}.12",
               (("tun1", f"{FRONT}.31"), ("tun2", f"{FRONT}.32"))),
)
# An echo service (busybox nc running cat) on the NAT real servers: long-lived connections.
ECHO = LabService("echo-nat", "nat", f"{FRONT}.10", SERVICES[0].realservers, port=7)
ALL_SERVICES = (*SERVICES, ECHO)
DIRECTORS = {"lb1": (f"{FRONT}.2", f"{INSIDE}.2"), "lb2": (f"{FRONT}.3", f"{INSIDE}.3")}


def hosts() -> tuple[Host, ...]:
    """Every host of the lab with its interfaces."""
    out = [Host("zk", (Port("front", "eth0", f"{ZK_ADDR}/24"),)),
           Host("client", (Port("front", "eth0", f"{CLIENT_ADDR}/24"),))]
    for name, (front, inside) in DIRECTORS.items():
        out.append(Host(name, (Port("front", "eth0", f"{front}/24"),
                               Port("inside", "eth1", f"{inside}/24"))))
    for svc in SERVICES:
        bridge = "inside" if svc.mode == "nat" else "front"
        for rs, address in svc.realservers:
            out.append(Host(rs, (Port(bridge, "eth0", f"{address}/24"),)))
    return tuple(out)


def netns_name(lab_id: str, role: str) -> str:
    return f"lvlab-{lab_id}-{role}"


def cluster_yaml(lab_id: str, auth_file: str) -> str:
    """The lab's cluster file (lvsctl's own schema), generated for these addresses."""
    check = ", ".join(f"{k}: {v}" for k, v in CHECK.items())
    lines = [
        f"# lvsctl lab {lab_id}: generated; every address lives only inside the lab's namespaces",
        f"cluster: lab-{lab_id}",
        f"zookeeper: {{hosts: ['{ZK_ADDR}:2181'], root: /lvsctl, session_timeout: {SESSION}, "
        f"auth: {auth_file}}}",
        "directors:",
    ]
    for name, (front, _inside) in DIRECTORS.items():
        lines.append(f"  - {{name: {name}, address: {front}/24, interface: eth0, "
                     f"peer: {{address: {front}, port: {PEER_PORT}}}, "
                     "sync: {interface: eth1, id: 1}}")
    lines.append("vips:")
    for svc in SERVICES:
        lines.append(f"  - {{address: {svc.vip}, interface: eth0}}")
    lines.append(f"  - {{address: {INSIDE_VIP}, interface: eth1, inside: true, "
                 f"network: {INSIDE}.0/24}}")
    lines += ["announce: {count: 2, interval: 50ms}", "services:"]
    for svc in ALL_SERVICES:
        lines += [f"  - name: {svc.name}", f"    vip: {svc.vip}", f"    port: {svc.port}",
                  "    protocol: tcp", f"    forwarding: {svc.mode}", "    scheduler: rr",
                  f"    check: {{type: tcp, {check}}}", "    realservers:"]
        lines += [f"      - {{name: {rs}, address: {address}}}" for rs, address in svc.realservers]
    return "\n".join(lines) + "\n"


def node_yaml(lab_id: str, director: str, workdir: Path) -> str:
    return "\n".join([
        f"cluster: lab-{lab_id}",
        f"director: {director}",
        f"zookeeper: {{hosts: ['{ZK_ADDR}:2181'], root: /lvsctl, session_timeout: {SESSION}, "
        f"auth: {workdir / 'zk.secret'}}}",
        f"peer: {{secret: {workdir / 'peer.secret'}}}",
        f"api: {{listen: '0.0.0.0:{API_PORT}', token: {workdir / 'api.token'}, drills: true}}",
        "ipvs: kernel",
        f"state_dir: {workdir / director}",
        "log_format: json",
        "",
    ])


def spread(names: Sequence[str]) -> dict[str, int]:
    """How many answers each real server gave, in first-seen order."""
    out: dict[str, int] = {}
    for name in names:
        out[name] = out.get(name, 0) + 1
    return out


FORWARD = {"nat": "Masq", "dr": "Route", "tun": "Tunnel"}  # ipvsadm -Ln's words


def expected_listing() -> dict[str, set[str]]:
    """What ``ipvsadm -Ln`` must list on a director once every real server is healthy, from
    the lab's own plan (not from lvsctl's code): ``"TCP VIP:PORT rr"`` -> its real servers'
    ``"ADDR:PORT FWD WEIGHT"``."""
    return {f"TCP {svc.vip}:{svc.port} rr": {f"{address}:{svc.port} {FORWARD[svc.mode]} 1"
                                             for _rs, address in svc.realservers}
            for svc in ALL_SERVICES}


def ipvsadm_services(listing: str) -> dict[str, set[str]]:
    """``ipvsadm -Ln`` parsed: ``"PROT VIP:PORT SCHED"`` -> its real servers'
    ``"ADDR:PORT FWD WEIGHT"``."""
    out: dict[str, set[str]] = {}
    current: str | None = None
    for line in listing.splitlines():
        words = line.split()
        if line.startswith(("TCP ", "UDP ", "SCTP ", "FWM ")) and len(words) >= 3:
            current = " ".join(words[:3])
            out[current] = set()
        elif current is not None and words[:1] == ["->"] and len(words) >= 4:
            out[current].add(" ".join(words[1:4]))
    return out
