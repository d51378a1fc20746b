"""An in-memory IPVS that obeys the kernel's rules, for tests on hosts without IPVS.

It refuses what the kernel refuses, with the kernel's errno (EEXIST on a duplicate add, ESRCH
for a missing service, ENOENT for a missing dest or an unknown scheduler, EINVAL for a mixed
address family outside tunnel mode, ...); tests/contract/test_ipvs_contract.py runs one suite
against it and against the real kernel to prove it. With ``path`` the table lives in a JSON
file (locked with flock for each call), so several processes — a director under test and the
test inspecting it — share one table.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lvsctl.core.model import (
    SCHEDULERS,
    DestKey,
    Family,
    Forwarding,
    Protocol,
    ServiceKey,
    ServiceSpec,
)
from lvsctl.director.ipvs_rules import (
    SyncDaemon,
    SyncState,
    check_sync_args,
    kernel_error,
    refusal,
    service_bits,
    service_spec,
    settle,
    sync_start_text,
)
from lvsctl.director.reconcile import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    EditService,
    ObservedDest,
    ObservedService,
    Op,
)

_State = dict[str, Any]

# The schedulers the fake offers: those Debian 12's kernel ships as modules. The kernel answers
# ENOENT for a scheduler it has no module for, and "twos" (Linux 5.11) is not built there.
SCHEDULERS_AVAILABLE = frozenset(SCHEDULERS) - {"twos"}


def _empty() -> _State:
    return {"services": {}, "daemons": {}, "writes": 0}


def _skey(key: ServiceKey) -> str:
    return json.dumps([int(key.family), key.protocol.value if key.protocol else 0,
                       key.address, key.port, key.fwmark])


def _parse_skey(text: str) -> ServiceKey:
    family, protocol, address, port, fwmark = json.loads(text)
    if fwmark:
        return ServiceKey.mark(Family(family), fwmark)
    return ServiceKey.inet(Protocol(protocol), address, port)


def _dkey(key: DestKey) -> str:
    return json.dumps([key.address, key.port])


class FakeIpvs:
    """IpvsTable in memory (or in a JSON file shared between processes)."""

    def __init__(self, path: str | Path | None = None,
                 schedulers: frozenset[str] = SCHEDULERS_AVAILABLE) -> None:
        self.path = Path(path) if path is not None else None
        self.schedulers = schedulers
        self._state = _empty()
        if self.path is not None and not self.path.exists():
            with self._locked():
                pass

    # -- storage ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_State]:
        if self.path is None:
            yield self._state
            return
        lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(self.path.read_text())
            except FileNotFoundError:
                state = _empty()
            yield state
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        finally:
            os.close(lock)

    @property
    def writes(self) -> int:
        with self._locked() as state:
            return int(state["writes"])

    @writes.setter
    def writes(self, value: int) -> None:
        with self._locked() as state:
            state["writes"] = value

    def close(self) -> None:
        """Nothing to release; the table stays (in memory, or in the file)."""

    # -- IpvsTable ----------------------------------------------------------------------------

    def observe(self, *, stats: bool = True) -> dict[ServiceKey, ObservedService]:
        """The table; ``stats`` changes nothing (the fake carries no traffic)."""
        with self._locked() as state:
            return {_parse_skey(k): _observed(_parse_skey(k), v)
                    for k, v in state["services"].items()}

    def apply(self, op: Op) -> bool:
        return settle(op, self.apply_batch([op])[0])

    def apply_batch(self, ops: Sequence[Op]) -> list[int]:
        """Each op's errno (0 = done), in order; an op the kernel would refuse whatever it
        holds is answered without being counted as a write, as KernelIpvs does not send it."""
        codes: list[int] = []
        with self._locked() as state:
            for op in ops:
                code = refusal(op)
                if not code:
                    state["writes"] += 1
                    code = _apply(state, op, self.schedulers)
                codes.append(code)
        return codes

    def sync_daemons(self) -> list[SyncDaemon]:
        with self._locked() as state:
            # The kernel's defaults: payload = MTU 1500 - IPv4 and UDP headers, IPVS's group
            # and port, TTL 1.
            return [SyncDaemon(SyncState(int(s)), d["interface"], d["sync_id"], 1472,
                               "224.0.0.81", 8848, 1)
                    for s, d in sorted(state["daemons"].items())]

    def start_sync_daemon(self, state: SyncState, interface: str, sync_id: int) -> None:
        check_sync_args(state, interface, sync_id)
        with self._locked() as st:
            st["writes"] += 1
            if str(int(state)) in st["daemons"]:
                raise kernel_error(sync_start_text(state, interface, sync_id), errnos.EEXIST)
            st["daemons"][str(int(state))] = {"interface": interface, "sync_id": sync_id}

    def stop_sync_daemon(self, state: SyncState) -> bool:
        with self._locked() as st:
            st["writes"] += 1
            return st["daemons"].pop(str(int(state)), None) is not None

    # -- test hooks ---------------------------------------------------------------------------

    def set_conns(self, service: ServiceKey, dest: DestKey, active: int, inactive: int = 0
                  ) -> None:
        """Pretend connections use a dest (the fake carries no traffic)."""
        with self._locked() as state:
            entry = state["services"][_skey(service)]["dests"][_dkey(dest)]
            entry["active"], entry["inactive"] = active, inactive

    def clear(self) -> None:
        with self._locked() as state:
            state["services"].clear()


def _observed(key: ServiceKey, raw: dict[str, Any]) -> ObservedService:
    spec = service_spec(raw["scheduler"], raw["flags"], raw["timeout"], raw["netmask"],
                        key.family.host_prefix)
    dests = {}
    for d in raw["dests"].values():
        dkey = DestKey(d["address"], d["port"])
        dests[dkey] = ObservedDest(dkey, d["weight"], d["fwd"], d["active"], d["inactive"])
    return ObservedService(key, spec, dests)


def _apply(state: _State, op: Op, schedulers: frozenset[str]) -> int:
    """Apply one op (that ``refusal`` passed) to the state as the kernel would; its errno."""
    services = state["services"]
    if isinstance(op, AddService | EditService):
        exists = _skey(op.key) in services
        if isinstance(op, AddService) and exists:
            return errnos.EEXIST
        if isinstance(op, EditService) and not exists:
            return errnos.ESRCH
        if op.spec.scheduler not in schedulers:
            return errnos.ENOENT
        old = services.get(_skey(op.key), {"dests": {}})
        services[_skey(op.key)] = {**old, **_service_entry(op.spec)}
        return 0
    if isinstance(op, DelService):
        return 0 if services.pop(_skey(op.key), None) is not None else errnos.ESRCH
    service = services.get(_skey(op.service))
    if service is None:
        return errnos.ESRCH
    dests = service["dests"]
    if isinstance(op, DelDest):
        return 0 if dests.pop(_dkey(op.key), None) is not None else errnos.ENOENT
    mixed = Family.of(op.key.address) is not op.service.family
    if mixed and (op.spec.forwarding is not Forwarding.TUN or state["daemons"]):
        # The kernel forwards to another family only by tunnel, and never while syncing.
        return errnos.EINVAL
    entry = dests.get(_dkey(op.key))
    if isinstance(op, AddDest) and entry is not None:
        return errnos.EEXIST
    if not isinstance(op, AddDest) and entry is None:
        return errnos.ENOENT
    if entry is None:
        entry = dests[_dkey(op.key)] = {"address": op.key.address, "port": op.key.port,
                                        "active": 0, "inactive": 0}
    entry["weight"] = op.spec.weight
    entry["fwd"] = op.spec.forwarding.value
    return 0


def _service_entry(spec: ServiceSpec) -> dict[str, Any]:
    return {"scheduler": spec.scheduler, "flags": service_bits(spec), "timeout": spec.persistence,
            "netmask": spec.netmask}
