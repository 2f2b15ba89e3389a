"""Networking helpers the tests share: loopback only, so no test listens beyond this machine."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it; the socket is
    closed on return, so a test may bind it, or use it as a port nobody answers on)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
