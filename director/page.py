"""The director's live status page: one self-contained HTML page (inline CSS, no scripts, no
external assets, refreshes itself) built from its own DirectorRecord and, when the peer's API
answered, the peer's.

``render_page`` is pure: the API handler gathers the records (its own /status, the peer's
/status fetched with a short timeout) and the kernel's view from the last observe pass, and
returns the text with ``Content-Type: text/html; charset=utf-8``. Every value is escaped by
Jinja2's autoescape: reasons, config errors and the peer's record are untrusted text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from lvsctl.core.records import DirectorRecord, TransitionRecord
from lvsctl.director.metrics import KernelService, Role

if TYPE_CHECKING:
    import jinja2

CONTENT_TYPE = "text/html; charset=utf-8"
REFRESH_SECONDS = 5
TRANSITIONS_SHOWN = 20


@dataclass(frozen=True)
class DirectorRow:
    """One director of the pair as the page shows it."""

    record: DirectorRecord
    own: bool  # this page's director (the other is the peer's view)
    role_class: str  # a CSS class from the Role enum, "other" for anything else
    since: str  # "2026-11-29 21:05:03 UTC (12 s ago)" or "-"
    lease: str  # seconds of VIP lease left, or "-"


@dataclass(frozen=True)
class RealServerRow:
    name: str
    address: str
    health: str  # up, down, unknown
    reason: str
    weight: int  # configured
    effective: str  # the weight in the kernel now, or "-" when it holds no such dest
    active: str
    inactive: str
    peer_health: str | None  # the peer's check result (None: no peer view)
    peer_reason: str


@dataclass(frozen=True)
class ServiceRow:
    name: str
    service: str
    forwarding: str
    healthy: int
    realservers: tuple[RealServerRow, ...]


@dataclass(frozen=True)
class TransitionRow:
    at: str
    director: str
    event: str
    state: str
    epoch: str
    reason: str


def _when(wall: float | None, now: float) -> str:
    if wall is None:
        return "-"
    stamp = datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({max(0, int(now - wall))} s ago)"


def _role_class(role: str) -> str:
    return role.lower() if role in {r.value for r in Role} else "other"


def _health(record: DirectorRecord) -> dict[tuple[str, str], tuple[str, str]]:
    out = {}
    for svc in record.services:
        for rs in svc.realservers:
            state = ("unknown" if rs.health is None else "up" if rs.health.healthy else "down")
            out[(svc.name, rs.name)] = (state, "" if rs.health is None else rs.health.reason)
    return out


def pair_verdict(rows: Sequence[DirectorRow]) -> tuple[str, str]:
    """(CSS class, sentence) for the pair: one active, none, more than one, or (without the
    peer's view) this director is not active and the page cannot tell more."""
    active = [r.record.director for r in rows if r.record.role == Role.ACTIVE.value]
    if len(active) == 1:
        return "ok", f"{active[0]} is active"
    if not active and len(rows) == 1:
        return "unknown", f"{rows[0].record.director} is not active; the peer's view is missing"
    if not active:
        return "bad", "no director is active"
    return "bad", f"more than one director claims to be active: {', '.join(active)}"


def view(own: DirectorRecord, peer: DirectorRecord | None, *, now: float,
         lease_seconds_left: float | None = None, kernel: Sequence[KernelService] = ()
         ) -> tuple[list[DirectorRow], list[ServiceRow], list[TransitionRow]]:
    """The page's rows: the pair, the services with their real servers, the transitions."""
    directors = [DirectorRow(own, True, _role_class(own.role), _when(own.since, now),
                             "-" if lease_seconds_left is None else f"{lease_seconds_left:.1f} s")]
    if peer is not None:
        directors.append(DirectorRow(peer, False, _role_class(peer.role),
                                     _when(peer.since, now), "-"))
    in_kernel = {(svc.service, d.realserver): d for svc in kernel for d in svc.dests}
    theirs = _health(peer) if peer is not None else {}
    services = []
    for svc in own.services:
        rows = []
        for rs in svc.realservers:
            health = "unknown" if rs.health is None else "up" if rs.health.healthy else "down"
            dest = in_kernel.get((svc.name, rs.name))
            peer_health, peer_reason = theirs.get((svc.name, rs.name), ("unknown", ""))
            rows.append(RealServerRow(
                name=rs.name, address=rs.address, health=health,
                reason="" if rs.health is None else rs.health.reason, weight=rs.weight,
                effective="-" if dest is None else str(dest.weight),
                active="-" if dest is None else str(dest.active_conns),
                inactive="-" if dest is None else str(dest.inactive_conns),
                peer_health=None if peer is None else peer_health, peer_reason=peer_reason))
        services.append(ServiceRow(svc.name, svc.service, svc.forwarding,
                                   sum(r.health == "up" for r in rows), tuple(rows)))
    events: list[TransitionRecord] = [*own.transitions,
                                      *(peer.transitions if peer is not None else ())]
    events.sort(key=lambda t: t.wall, reverse=True)
    transitions = [TransitionRow(
        at=_when(t.wall, now), director=t.director, event=t.event, state=t.state or "",
        epoch="" if t.epoch is None else str(t.epoch),
        reason=t.reason or (f"{t.service}/{t.realserver} "
                            f"{'up' if t.healthy else 'down'}" if t.service else ""))
        for t in events[:TRANSITIONS_SHOWN]]
    return directors, services, transitions


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    # Imported at the first page, not with the worker: its start is slow enough in the
    # kernel VM's emulated CPU, and most directors never render the page.
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lvsctl.templates", "status"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    return env.get_template("page.html.j2")


def render_page(own: DirectorRecord, peer: DirectorRecord | None = None, *, now: float,
                lease_seconds_left: float | None = None, kernel: Sequence[KernelService] = (),
                peer_note: str = "", refresh_seconds: int = REFRESH_SECONDS) -> str:
    """The whole page as one string.

    ``own`` is this director's record, ``peer`` the other director's when its API answered
    (``peer_note`` says why it is missing otherwise), ``now`` the wall clock (seconds),
    ``kernel`` the last observe pass (connections and the weights in force).
    """
    directors, services, transitions = view(own, peer, now=now,
                                            lease_seconds_left=lease_seconds_left, kernel=kernel)
    verdict_class, verdict = pair_verdict(directors)
    return _template().render(
        own=own, directors=directors, services=services, transitions=transitions,
        verdict=verdict, verdict_class=verdict_class, peer_seen=peer is not None,
        peer_note=peer_note, refresh=max(1, int(refresh_seconds)),
        generated=_when(now, now).split(" (")[0],
    )
