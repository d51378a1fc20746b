"""The director's HTTP API under hostile clients, on real loopback sockets: slowloris headers,
a connection flood, oversized bodies, undecodable headers, a failing handler, a taken port,
and a process that runs out of file descriptors."""

from __future__ import annotations

import asyncio
import http.client
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.node import Api, Node
from lvsctl.director.api import ApiError, make_app, start_api
from lvsctl.director.api_limits import BODY_LIMIT, Limits, Listening, listen

TOKEN = "token-0123456789"


class Director:
    """What the API serves (director/api.py's ``Director``): a fixed status."""

    def __init__(self, tmp: Path, port: int = 0) -> None:
        token = tmp / "api.token"
        token.write_text(TOKEN + "\n")
        self.node = Node(cluster="t", director="lb1",
                         zookeeper=ZooKeeperSettings(("127.0.0.1:2181",), "/lvsctl", 2.5, None),
                         peer_secret_file=str(tmp / "peer.secret"),
                         api=Api("127.0.0.1", port, str(token), False), ipvs="kernel",
                         state_dir=str(tmp / "state"), log_format="json",
                         source=str(tmp / "node.yaml"))
        self.drill_pid = 0
        self.stepdowns = 0
        self.fail = False

    def status(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("status broke")
        return {"director": "lb1", "role": "ACTIVE", "epoch": 3, "vips": []}

    async def stepdown(self) -> None:
        self.stepdowns += 1


@contextmanager
def serving(tmp: Path, limits: Limits | None = None) -> Iterator[tuple[Listening, Director,
                                                                       asyncio.AbstractEventLoop]]:
    """The API on the worker's kind of loop (uvloop) in a thread of its own (the test talks to
    it with blocking sockets)."""
    director = Director(tmp)
    loop = uvloop.new_event_loop()
    started: list[Listening] = []

    async def start() -> None:
        started.append(await listen(make_app(director), "127.0.0.1", 0, limits))

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield started[0], director, loop
    finally:
        asyncio.run_coroutine_threadsafe(started[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def port_of(api: Listening) -> int:
    return int(api.addresses[0][1])


def get(port: int, path: str = "/status", method: str = "GET",
        headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` on a fresh connection; everything the server says until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_headers_that_never_end_are_cut_off_with_408(tmp_path: Path) -> None:
    with serving(tmp_path, Limits(header_timeout=0.5)) as (api, _, _loop):
        port = port_of(api)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            for _ in range(30):  # a slowloris: one byte now and then, never the blank line
                try:
                    sock.sendall(b"X")
                except OSError:
                    break
                time.sleep(0.1)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert api.limits.counts.header_timeouts == 1
        assert get(port)[0] == 200  # the API still answers


def test_a_body_that_trickles_is_cut_off(tmp_path: Path) -> None:
    """A body slowloris: headers in time, then the body one byte now and then."""
    limits = Limits(request_timeout=0.5, connection_limit=3.0)
    with serving(tmp_path, limits) as (api, _director, _loop):
        with socket.create_connection(("127.0.0.1", port_of(api)), timeout=20) as sock:
            sock.sendall(b"POST /stepdown HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                         b"Content-Length: 1000\r\n\r\n")
            sent = 0
            while sent < 1000:  # 100 s if nobody stops it
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable and not sock.recv(65536):
                    break  # the server closed the connection
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                sent += 1
        assert sent < 1000
        assert get(port_of(api))[0] == 200


def test_connections_past_the_limit_get_503_and_the_api_recovers(tmp_path: Path) -> None:
    with serving(tmp_path, Limits(max_connections=4, header_timeout=120.0,
                                  connection_limit=180.0)) as (api, _, _loop):
        port = port_of(api)
        held = []
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /status HTTP/1.1\r\n")  # half a request
            held.append(sock)
        deadline = time.monotonic() + 10
        while api.limits.counts.open < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert raw(port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
            b"HTTP/1.1 503 ")
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while api.limits.counts.open and time.monotonic() < deadline:
            time.sleep(0.01)
        assert get(port)[0] == 200
        assert api.limits.counts.refused >= 1


def test_a_body_past_the_limit_is_refused_with_413(tmp_path: Path) -> None:
    with serving(tmp_path) as (api, director, _loop):
        status, _ = get(port_of(api), "/stepdown", "POST",
                        {"Authorization": f"Bearer {TOKEN}"}, b"x" * (BODY_LIMIT + 1))
        assert status == 413
        assert director.stepdowns == 0


def test_an_undecodable_authorization_header_is_a_400(tmp_path: Path) -> None:
    with serving(tmp_path) as (api, director, _loop):
        answer = raw(port_of(api), b"POST /stepdown HTTP/1.1\r\nHost: x\r\n"
                                   b"Authorization: Bearer \xff\xfe\x80\r\n"
                                   b"Content-Length: 0\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), answer
        assert body.count(b"\n") <= 1 and b"Traceback" not in body
        assert director.stepdowns == 0
        assert get(port_of(api))[0] == 200


def test_a_failing_handler_is_one_line_500_and_the_api_goes_on(tmp_path: Path) -> None:
    with serving(tmp_path) as (api, director, _loop):
        director.fail = True
        status, body = get(port_of(api))
        assert (status, body) == (500, "internal error: RuntimeError\n")
        director.fail = False
        assert get(port_of(api))[0] == 200
        assert api.limits.counts.errors == 1


def test_a_taken_port_is_one_line_api_error(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        director = Director(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(ApiError) as caught:
            asyncio.run(start_api(director))
        assert caught.value.lines() == [
            f"api.listen: cannot listen on 127.0.0.1:{taken.getsockname()[1]}: "
            "Address already in use"]
    finally:
        taken.close()


SHORT_OF_DESCRIPTORS = textwrap.dedent("""\
    import asyncio, resource, sys, uvloop
    from pathlib import Path
    from lvsctl.director.api import make_app
    from lvsctl.director.api_limits import Limits, listen
    sys.path.insert(0, sys.argv[1])
    from tests.integration.test_api_limits import Director

    async def main():
        # Far fewer descriptors than the connection limit: accept runs into EMFILE.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        api = await listen(make_app(Director(Path(sys.argv[2]))), "127.0.0.1", 0,
                           Limits(max_connections=1000))
        print(api.addresses[0][1], flush=True)
        await asyncio.sleep(float(sys.argv[3]))
        await api.cleanup()

    uvloop.run(main())
    """)


def test_running_out_of_descriptors_does_not_stop_the_api(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-c", SHORT_OF_DESCRIPTORS, root, str(tmp_path),
                             "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=root)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        flood = []
        for _ in range(200):  # each half-open connection holds one of the server's descriptors
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"GET /status HTTP/1.1\r\n")
                flood.append(sock)
            except OSError:
                break
        time.sleep(1.0)  # let the server run into its limit while the flood holds
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        for sock in flood:
            sock.close()
        deadline = time.monotonic() + 30
        answered = None
        while time.monotonic() < deadline and answered is None:
            try:
                answered = get(port)[0]
            except OSError:
                time.sleep(0.2)
        assert answered == 200
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
