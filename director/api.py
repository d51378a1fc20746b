"""The director's HTTP endpoint: ``/status``, ``/metrics`` (Prometheus), ``/`` (the status
page), ``/ipvs`` (the observed table and what the next pass plans from, for ``config push
--plan``) and ``/realservers`` (every real server's override, weights and the kernel's
connection counts) for anyone who can reach it, and authenticated actions (``POST /stepdown``;
``/crash`` and ``/freeze`` for drills).

It listens where the node file's ``api.listen`` says (localhost by default). Actions need
``Authorization: Bearer <token>`` with the token from ``api.token`` (compared in constant
time); without a token file there are no actions at all. The drill actions also need
``api.drills: true``.

It runs in the director's worker (director/worker.py). The drill actions act on the keeper,
whose death or stop is what a drill means: ``/crash`` SIGKILLs it (the worker follows, its
channel closed), ``/freeze`` SIGSTOPs it and a small child sends SIGCONT later.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from lvsctl.core.errors import LvsctlError
from lvsctl.core.node import Node
from lvsctl.director.api_limits import BODY_LIMIT, Listening, listen
from lvsctl.director.metrics import MetricsUnavailable
from lvsctl.director.page import CONTENT_TYPE as PAGE_CONTENT_TYPE


class Director(Protocol):
    """What the API serves and acts on (director/worker.py's ``Worker``)."""

    node: Node
    drill_pid: int  # the process the drills kill or stop: the keeper (its worker follows)

    def status(self) -> dict[str, Any]: ...

    def realservers(self) -> dict[str, Any]: ...

    async def stepdown(self) -> None: ...

    def ipvs(self) -> dict[str, Any]: ...
    async def scrape_metrics(self) -> tuple[bytes, str]:
        """(body, Content-Type). Raises MetricsUnavailable."""

    async def status_page(self) -> str: ...


def _token(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        token = Path(path).read_bytes().strip()
    except OSError:
        return None
    return token or None


def authorized(request: web.Request, token: bytes | None) -> bool:
    if token is None:
        return False
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token)


def make_app(director: Director) -> web.Application:
    async def status(_: web.Request) -> web.Response:
        return web.json_response(director.status())

    async def realservers(_: web.Request) -> web.Response:
        return web.json_response(director.realservers())

    async def metrics(_: web.Request) -> web.Response:
        try:
            body, content_type = await director.scrape_metrics()
        except MetricsUnavailable as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=await director.status_page(),
                            headers={"Content-Type": PAGE_CONTENT_TYPE})

    async def ipvs(_: web.Request) -> web.Response:
        try:
            return web.json_response(director.ipvs())
        except LvsctlError as exc:
            return web.json_response({"error": str(exc)}, status=503)

    def guard(request: web.Request, drill: bool = False) -> None:
        if not authorized(request, _token(director.node.api.token_file)):
            raise web.HTTPUnauthorized(text="a valid bearer token is required\n")
        if drill and not director.node.api.drills:
            raise web.HTTPForbidden(text="drill actions are off (api.drills in the node file)\n")

    async def stepdown(request: web.Request) -> web.Response:
        guard(request)
        was = director.status()
        await director.stepdown()
        return web.json_response({"stepped_down": was["role"] == "ACTIVE",
                                  "epoch": was["epoch"]})

    async def crash(request: web.Request) -> web.Response:
        guard(request, drill=True)
        asyncio.get_running_loop().call_later(0.05, os.kill, director.drill_pid, signal.SIGKILL)
        return web.json_response({"crashing": True})

    async def freeze(request: web.Request) -> web.Response:
        guard(request, drill=True)
        seconds = _freeze_seconds(request.query.get("seconds"))
        # A stopped process cannot wake itself: a small child process sends SIGCONT later.
        subprocess.Popen(
            [sys.executable, "-c", _RESUME, f"{seconds:g}", str(director.drill_pid)],
            start_new_session=True, stdin=subprocess.DEVNULL,
        )
        asyncio.get_running_loop().call_later(0.05, os.kill, director.drill_pid, signal.SIGSTOP)
        return web.json_response({"freezing": True, "seconds": seconds})

    app = web.Application(client_max_size=BODY_LIMIT)
    app.add_routes([
        web.get("/status", status), web.get("/metrics", metrics), web.get("/", page),
        web.get("/realservers", realservers),
        web.post("/stepdown", stepdown), web.post("/crash", crash), web.post("/freeze", freeze),
        web.get("/ipvs", ipvs),
    ])
    return app


FREEZE_DEFAULT = 10.0
FREEZE_MAX = 600.0
_RESUME = (
    "import os, signal, sys, time\n"
    "time.sleep(float(sys.argv[1]))\n"
    "os.kill(int(sys.argv[2]), signal.SIGCONT)\n"
)


def _freeze_seconds(raw: str | None) -> float:
    """How long a freeze drill stops the director: ``?seconds=N``, 0 < N <= 600."""
    if raw is None:
        return FREEZE_DEFAULT
    try:
        seconds = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"seconds: expected a number, got {raw!r}\n") from None
    if not 0 < seconds <= FREEZE_MAX:
        raise web.HTTPBadRequest(text=f"seconds: expected more than 0 and at most {FREEZE_MAX:g}\n")
    return seconds


class ApiError(LvsctlError):
    """The API cannot listen where the node file says."""


async def start_api(director: Director) -> Listening:
    """Start listening within the limits of director/api_limits.py; returns the server
    (``address`` where it listens, ``await cleanup()`` to stop).

    Raises ApiError (one line: the address and the system's reason) if it cannot listen.
    """
    api = director.node.api
    try:
        return await listen(make_app(director), api.host, api.port)
    except OSError as exc:
        # asyncio words the bind error at length: the system's own reason is enough.
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ApiError(f"api.listen: cannot listen on {api.host}:{api.port}: {why}") from None
