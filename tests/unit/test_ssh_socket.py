"""The TCP connection under an SSH session: Nagle off from the first packet, and (on Linux)
acknowledgements sent at once, so that sshd's small packets are not held for 40 ms."""

from __future__ import annotations

import socket
import threading

import pytest

from deploy_runs.remote import _open_socket, _QuickAckSocket


def serve_once(payload: bytes, exchanges: int = 1) -> tuple[int, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        with listener, listener.accept()[0] as conn:
            for _ in range(exchanges):
                conn.sendall(conn.recv(64) + payload)
            # the client closes first: a FIN arriving puts the client's socket back into
            # delayed-ACK mode (Linux's tcp_fin), which raced the check of the last exchange
            conn.recv(64)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return port, thread


def test_the_socket_sends_without_nagle_and_reads_what_the_server_sends():
    port, thread = serve_once(b" and back")
    with _open_socket("127.0.0.1", port, timeout=5) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.gettimeout() == 5
        sock.sendall(b"there")
        received = b""
        while len(received) < len(b"there and back"):
            chunk = sock.recv(64)
            assert chunk, "the server closed before answering"
            received += chunk
    thread.join(5)
    assert received == b"there and back"


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")
def test_on_linux_every_read_acknowledges_at_once():
    # A plain socket goes into Linux's delayed-acknowledgement ("pingpong") mode after a
    # request and its answer (TCP_QUICKACK reads 0 from the second exchange on, measured);
    # this one leaves it after every read.
    port, thread = serve_once(b"", exchanges=3)
    with _open_socket("127.0.0.1", port, timeout=5) as sock:
        assert isinstance(sock, _QuickAckSocket)
        for _ in range(3):
            sock.sendall(b"x")
            assert sock.recv(64) == b"x"
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
    thread.join(5)


def test_a_closed_port_raises_the_connection_error():
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        _open_socket("127.0.0.1", port, timeout=5)
