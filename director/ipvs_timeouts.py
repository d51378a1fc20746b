"""The kernel's IPVS connection timeouts (tcp, tcp_fin, udp): read, planned and set over netlink.

This is ``ipvsadm --set TCP TCPFIN UDP`` and ``ipvsadm -L --timeout``: generic netlink
``IPVS_CMD_SET_CONFIG`` / ``IPVS_CMD_GET_CONFIG`` with the ``IPVS_CMD_ATTR_TIMEOUT_TCP``,
``_TCP_FIN`` and ``_UDP`` attributes, each a u32 in seconds. pyroute2 0.9 carries these
attributes only as raw bytes, so the few messages are encoded here. The kernel keeps a timeout
it is sent as 0 unchanged, which is also what ``IpvsTimeouts`` means by 0.

The director calls ``sync_timeouts(table, cluster.ipvs_timeouts)`` on each reconcile pass:
it reads the kernel's values and writes only when a configured one differs.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import replace
from typing import Protocol

from lvsctl.core.errors import KernelError, NoIpvsError
from lvsctl.core.model import IpvsTimeouts
from lvsctl.director.ipvs import IpvsTable, KernelIpvs

# include/uapi/linux/ip_vs.h
IPVS_CMD_SET_CONFIG = 12
IPVS_CMD_GET_CONFIG = 13
IPVS_CMD_ATTR_TIMEOUT_TCP = 4
IPVS_CMD_ATTR_TIMEOUT_TCP_FIN = 5
IPVS_CMD_ATTR_TIMEOUT_UDP = 6
IPVS_GENL_VERSION = 1
# include/uapi/linux/netlink.h, genetlink.h
NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2

_NLMSGHDR = struct.Struct("=IHHII")
_GENLHDR = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ATTRS = {"tcp": IPVS_CMD_ATTR_TIMEOUT_TCP, "tcp_fin": IPVS_CMD_ATTR_TIMEOUT_TCP_FIN,
          "udp": IPVS_CMD_ATTR_TIMEOUT_UDP}
ANSWER_TIMEOUT = 30.0  # seconds; the kernel answers at once, this only ends a lost exchange


class TimeoutTable(Protocol):
    """Where the timeouts live: the kernel (``KernelTimeouts``) or a test's stand-in."""

    def observe(self) -> IpvsTimeouts: ...

    def set(self, timeouts: IpvsTimeouts) -> None: ...


def plan_timeouts(want: IpvsTimeouts, have: IpvsTimeouts) -> IpvsTimeouts | None:
    """Pure: what to send so the kernel has ``want`` (0 = not configured: left alone), or
    None when it already has every configured value."""
    send = IpvsTimeouts(**{key: value for key in _ATTRS
                           if (value := getattr(want, key)) and value != getattr(have, key)})
    return send if send.given else None


def apply_timeouts(table: TimeoutTable, want: IpvsTimeouts) -> IpvsTimeouts | None:
    """Make the kernel's timeouts match ``want``: the values sent, or None when nothing had to
    change (or nothing is configured: then the kernel is not even read). Raises KernelError."""
    if not want.given:
        return None
    send = plan_timeouts(want, table.observe())
    if send is not None:
        table.set(send)
    return send


def encode_timeouts(timeouts: IpvsTimeouts) -> bytes:
    """The attributes of an IPVS_CMD_SET_CONFIG request: only the non-zero timeouts."""
    return b"".join(_nla(attr, _U32.pack(value)) for key, attr in _ATTRS.items()
                    if (value := getattr(timeouts, key)))


def decode_timeouts(attrs: bytes) -> IpvsTimeouts:
    """The timeouts in the attributes of the kernel's answer to IPVS_CMD_GET_CONFIG."""
    found = {kind: data for kind, data in _attributes(attrs)}
    by_attr = {attr: key for key, attr in _ATTRS.items()}
    return replace(IpvsTimeouts(), **{by_attr[kind]: _U32.unpack_from(data)[0]
                                      for kind, data in found.items()
                                      if kind in by_attr and len(data) >= 4})


def _nla(kind: int, data: bytes) -> bytes:
    size = _NLA.size + len(data)
    return _NLA.pack(size, kind) + data + b"\0" * (-size % 4)


def _attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _NLA.size <= len(data):
        size, kind = _NLA.unpack_from(data, offset)
        if size < _NLA.size:
            return
        yield kind & 0x3FFF, data[offset + _NLA.size:offset + size]
        offset += (size + 3) & ~3


@contextlib.contextmanager
def _in_netns(name: str | None) -> Iterator[None]:
    """This thread inside network namespace ``name`` (a socket made here stays in it)."""
    if name is None:
        yield
        return
    from pyroute2.netns import popns, pushns

    try:
        pushns(name)
    except OSError as exc:
        raise KernelError(f"cannot enter network namespace {name!r}: {exc.strerror}",
                          errno=exc.errno) from None
    try:
        yield
    finally:
        popns()


class KernelTimeouts:
    """The running kernel's IPVS timeouts (optionally in network namespace ``netns``).

    Raises NoIpvsError when the kernel has no IPVS, KernelError when a request is refused.
    """

    def __init__(self, netns: str | None = None) -> None:
        with _in_netns(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(ANSWER_TIMEOUT)
            self._seq = 0
            family = self._family_id()
            if family is None:
                raise NoIpvsError()
            self._family = family
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> KernelTimeouts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def observe(self) -> IpvsTimeouts:
        """The kernel's three timeouts, in seconds (``ipvsadm -L --timeout``)."""
        return decode_timeouts(self._exchange(self._family, IPVS_CMD_GET_CONFIG,
                                              IPVS_GENL_VERSION, b"", "read IPVS timeouts"))

    def set(self, timeouts: IpvsTimeouts) -> None:
        """Set the non-zero ones of ``timeouts`` (``ipvsadm --set``); the others stay."""
        self._exchange(self._family, IPVS_CMD_SET_CONFIG, IPVS_GENL_VERSION,
                       encode_timeouts(timeouts), f"set IPVS timeouts {timeouts_text(timeouts)}",
                       ack=True)

    def _family_id(self) -> int | None:
        try:
            attrs = self._exchange(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1,
                                   _nla(CTRL_ATTR_FAMILY_NAME, b"IPVS\0"), "look up IPVS")
        except KernelError as exc:
            if exc.errno in (errnos.ENOENT, errnos.EOPNOTSUPP):
                return None
            raise
        for kind, data in _attributes(attrs):
            if kind == CTRL_ATTR_FAMILY_ID:
                return int(struct.unpack_from("=H", data)[0])
        return None

    def _exchange(self, family: int, cmd: int, version: int, attrs: bytes, what: str, *,
                  ack: bool = False) -> bytes:
        """One request; the attributes of its answer (b"" for an acknowledged write)."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        seq = self._seq
        size = _NLMSGHDR.size + _GENLHDR.size + len(attrs)
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
        self._sock.send(_NLMSGHDR.pack(size, family, flags, seq, 0)
                        + _GENLHDR.pack(cmd, version, 0) + attrs)
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                raise KernelError(f"{what}: the kernel did not answer within "
                                  f"{ANSWER_TIMEOUT:g} s", errno=errnos.ETIMEDOUT) from None
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, got, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                message = data[offset:offset + length]
                offset += (length + 3) & ~3
                if got != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", message, _NLMSGHDR.size)[0]
                    if code:
                        raise KernelError(f"{what}: {os.strerror(code)}", errno=code)
                    return b""
                return message[_NLMSGHDR.size + _GENLHDR.size:]


def timeouts_text(timeouts: IpvsTimeouts) -> str:
    """"tcp 900s tcp_fin 120s": the configured (non-zero) timeouts."""
    return " ".join(f"{key} {value}s" for key in _ATTRS if (value := getattr(timeouts, key)))


def timeouts_json(timeouts: IpvsTimeouts) -> dict[str, int]:
    """The timeouts as ``lvsctl ipvs show --json`` prints them (seconds)."""
    return {"tcp": timeouts.tcp, "tcp_fin": timeouts.tcp_fin, "udp": timeouts.udp}


def observe_timeouts(table: IpvsTable) -> IpvsTimeouts | None:
    """The timeouts of the kernel behind ``table`` (in its namespace); None for a table that
    is not the kernel's (the fake has none). Raises KernelError."""
    if not isinstance(table, KernelIpvs):
        return None
    with KernelTimeouts(table.netns) as kernel:
        return kernel.observe()


def sync_timeouts(table: IpvsTable, want: IpvsTimeouts) -> IpvsTimeouts | None:
    """One reconcile pass's timeouts step: make the kernel behind ``table`` hold ``want``.

    Returns the values it set, or None when nothing changed (nothing configured, already so,
    or ``table`` is not the kernel's). Raises KernelError when the kernel refuses.
    """
    if not want.given or not isinstance(table, KernelIpvs):
        return None
    with KernelTimeouts(table.netns) as kernel:
        return apply_timeouts(kernel, want)
