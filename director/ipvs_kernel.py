"""The only module that speaks IPVS netlink: the kernel's table (``KernelIpvs``) on a generic
netlink socket, optionally inside a network namespace.

Why a socket of its own rather than pyroute2's ``IPVS()``: the table is written and read in
bulk (10,000 dests), and pyroute2's per-request path (an event loop per call, generic nla
objects) costs far more per message than the kernel does. Requests are encoded by
``ipvs_codec`` and sent pipelined, many per ``send``, each acknowledged separately; the kernel
answers each on its own, so one refused request does not stop the ones after it. Writes are
counted (``writes``) so a benchmark can show that one changed weight is one write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errnos
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence

from lvsctl.core.errors import KernelError, NoIpvsError
from lvsctl.core.model import DestKey, ServiceKey
from lvsctl.director import ipvs_codec as codec
from lvsctl.director.ipvs_rules import (
    SyncDaemon,
    SyncState,
    check_sync_args,
    kernel_error,
    refusal,
    settle,
    sync_start_text,
)
from lvsctl.director.reconcile import ObservedDest, ObservedService, Op

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
CLONE_NEWNET = 0x40000000
BATCH = 256  # requests per send: well inside the socket buffers set below
ANSWER_TIMEOUT = 30.0  # seconds; the kernel answers at once, this only ends a lost exchange


@contextlib.contextmanager
def _in_netns(name: str | None) -> Iterator[None]:
    """Run the body in network namespace ``name`` (this thread only), then come back."""
    if name is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    except OSError:
        os.close(own)
        raise KernelError(f"no network namespace {name!r}") from None
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise KernelError(f"cannot enter network namespace {name!r}: {os.strerror(code)}",
                              errno=code)
        try:
            yield
        finally:
            libc.setns(own, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


def _modprobe_ip_vs() -> bool:
    """Load ip_vs as ipvsadm does when the family is missing; True if modprobe succeeded."""
    modprobe = shutil.which("modprobe") or "/sbin/modprobe"
    try:
        done = subprocess.run([modprobe, "-q", "--", "ip_vs"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class KernelIpvs:
    """IPVS in the running kernel (optionally inside network namespace ``netns``): an
    ``IpvsTable``.

    Raises NoIpvsError when the kernel has no IPVS (after trying ``modprobe ip_vs`` once, as
    ipvsadm does), KernelError when the socket cannot be opened.
    """

    def __init__(self, netns: str | None = None, *, family_name: str = "IPVS",
                 modprobe: Callable[[], bool] | None = None) -> None:
        self.netns = netns
        self.writes = 0
        self._seq = 0
        self._buf = bytearray(1 << 17)
        with _in_netns(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, codec.NETLINK_GENERIC)
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(ANSWER_TIMEOUT)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            try:  # past net.core.rmem_max (as root): room for a whole batch of acks
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            family = self._family_id(family_name)
            if family is None and (modprobe or _modprobe_ip_vs)():
                family = self._family_id(family_name)
            if family is None:
                raise NoIpvsError()
            self.family = family
        except BaseException:
            self._sock.close()
            raise

    # -- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> KernelIpvs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _messages(self) -> Iterator[tuple[int, int, memoryview]]:
        """(type, seq, whole message) for each netlink message of the next datagram."""
        try:
            size = self._sock.recv_into(self._buf)
        except TimeoutError:
            raise KernelError(f"the kernel did not answer an IPVS request within "
                              f"{ANSWER_TIMEOUT:g} s", errno=errnos.ETIMEDOUT) from None
        except OSError as exc:  # ENOBUFS: answers were lost; the table must be read again
            raise KernelError(f"reading IPVS answers failed: {exc.strerror}",
                              errno=exc.errno) from None
        return codec.messages(memoryview(self._buf)[:size])

    def _family_id(self, name: str) -> int | None:
        seq = self._next_seq()
        self._sock.send(codec.family_request(name, seq))
        while True:
            for kind, got, data in self._messages():
                if got != seq:
                    continue
                if kind == codec.NLMSG_ERROR:
                    code = codec.error_code(data)
                    if code in (errnos.ENOENT, errnos.EOPNOTSUPP):
                        return None
                    raise KernelError(f"generic netlink lookup of IPVS failed: "
                                      f"{os.strerror(code)}", errno=code)
                return codec.family_id(data[codec.HEADERS:])

    def _dump(self, cmd: int, attrs: bytes) -> list[memoryview]:
        """The attribute area of every reply to a dump request (copied out of the buffer)."""
        seq = self._next_seq()
        self._sock.send(codec.message(self.family, cmd, attrs,
                                      codec.NLM_F_REQUEST | codec.NLM_F_DUMP, seq))
        out: list[memoryview] = []
        while True:
            for kind, got, data in self._messages():
                if got != seq:
                    continue
                if kind == codec.NLMSG_DONE:
                    return out
                if kind == codec.NLMSG_ERROR:
                    code = codec.error_code(data)
                    if code:
                        raise kernel_error(codec.DUMP_NAMES.get(cmd, f"dump {cmd}"), code)
                    continue
                out.append(memoryview(bytes(data[codec.HEADERS:])))

    def _requests(self, requests: Sequence[tuple[int, bytes]]) -> list[int]:
        """Send write requests pipelined; the errno of each (0 = done), in order."""
        codes: list[int] = []
        flags = codec.NLM_F_REQUEST | codec.NLM_F_ACK
        for start in range(0, len(requests), BATCH):
            chunk = requests[start:start + BATCH]
            seqs = [self._next_seq() for _ in chunk]
            self._sock.send(b"".join(
                codec.message(self.family, cmd, attrs, flags, seq)
                for (cmd, attrs), seq in zip(chunk, seqs, strict=True)))
            self.writes += len(chunk)
            waiting = set(seqs)
            answers: dict[int, int] = {}
            while waiting:
                for kind, seq, msg in self._messages():
                    if kind == codec.NLMSG_ERROR and seq in waiting:
                        waiting.discard(seq)
                        answers[seq] = codec.error_code(msg)
            codes.extend(answers[seq] for seq in seqs)
        return codes

    # -- IpvsTable ----------------------------------------------------------------------------

    def observe(self, *, stats: bool = True) -> dict[ServiceKey, ObservedService]:
        """One pass over the table: every service and its dests with their connection counts,
        and (``stats``) their traffic counters and rates, which a reconcile pass can skip."""
        table: dict[ServiceKey, ObservedService] = {}
        for reply in self._dump(codec.CMD_GET_SERVICE, b""):
            service = codec.service_from_reply(reply)
            if service is None:
                continue
            dests: dict[DestKey, ObservedDest] = {}
            for dreply in self._dump(codec.CMD_GET_DEST, codec.service_key_nest(service.key)):
                dest = codec.dest_from_reply(dreply, service.key.family, stats)
                if dest is not None:
                    dests[dest.key] = dest
            table[service.key] = ObservedService(service.key, service.spec, dests,
                                                 service.pe_name, service.stats)
        return table

    def apply(self, op: Op) -> bool:
        """Apply one op: True if it changed the table, False if it was already so (EEXIST on an
        add, ESRCH/ENOENT on a delete). Raises KernelError when the kernel refuses it."""
        return settle(op, self.apply_batch([op])[0])

    def apply_batch(self, ops: Sequence[Op]) -> list[int]:
        """Send ``ops`` pipelined, in order; the kernel's errno for each (0 = done). Ops the
        kernel would refuse whatever it holds (``ipvs_rules.refusal``) are answered here
        without being sent. Raises KernelError only when the exchange itself fails."""
        codes = [refusal(op) for op in ops]
        if not any(codes):
            return self._requests([codec.op_request(op) for op in ops])
        sent = [i for i, code in enumerate(codes) if not code]
        answers = self._requests([codec.op_request(ops[i]) for i in sent])
        for i, code in zip(sent, answers, strict=True):
            codes[i] = code
        return codes

    def sync_daemons(self) -> list[SyncDaemon]:
        out = [daemon for reply in self._dump(codec.CMD_GET_DAEMON, b"")
               if (daemon := codec.daemon_from_reply(reply)) is not None]
        return sorted(out, key=lambda d: d.state)

    def start_sync_daemon(self, state: SyncState, interface: str, sync_id: int) -> None:
        """Start the master or backup daemon. KernelError: EEXIST if that one already runs,
        ENODEV for a missing interface, EINVAL for a name or sync id the kernel cannot take."""
        check_sync_args(state, interface, sync_id)
        (code,) = self._requests([(codec.CMD_NEW_DAEMON,
                                   codec.daemon_start(state, interface, sync_id))])
        if code:
            raise kernel_error(sync_start_text(state, interface, sync_id), code)

    def stop_sync_daemon(self, state: SyncState) -> bool:
        """Stop the master or backup daemon; False if it was not running (ESRCH)."""
        (code,) = self._requests([(codec.CMD_DEL_DAEMON, codec.daemon_stop(state))])
        if code == errnos.ESRCH:
            return False
        if code:
            raise kernel_error(f"stop sync daemon {state.label}", code)
        return True
