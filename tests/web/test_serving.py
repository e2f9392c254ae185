"""`reauth serve --reuse-port`: several processes can listen on one port."""

from __future__ import annotations

import socket

from worker.serving import reuse_port_socket


def test_two_reuse_port_sockets_share_one_port_and_accept() -> None:
    first = reuse_port_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = reuse_port_socket("127.0.0.1", port)
    try:
        assert second.getsockname()[1] == port
        first.listen()
        second.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        # A plain socket (what `reauth serve` binds without the flag) is refused the port.
        plain = socket.socket()
        try:
            plain.bind(("127.0.0.1", port))
            raise AssertionError("bound a taken port without SO_REUSEPORT")
        except OSError:
            pass
        finally:
            plain.close()
    finally:
        first.close()
        second.close()
