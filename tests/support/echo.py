"""One round trip on a long-lived connection through a lab service (the lab's echo listeners)."""

from __future__ import annotations

import socket
import time


def echo_round(sock: socket.socket, text: bytes, timeout: float = 30.0) -> bytes:
    """Send ``text`` and read until as many bytes came back, the peer closed or ``timeout``
    seconds passed; returns what came back."""
    sock.sendall(text)
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < len(text) and time.monotonic() < deadline:
        chunk = sock.recv(len(text) - len(got))
        if not chunk:
            break
        got += chunk
    return got
