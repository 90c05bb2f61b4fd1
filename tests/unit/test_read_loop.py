"""The command read loop keeps output that lands at the very end of a command.

paramiko's transport thread buffers a command's output and then marks EOF, at any moment
between two calls of the read loop. The interleaving that lost the tail of a command's output
before the fix (output and EOF both arriving after a read found nothing, before the EOF check)
is replayed here with a scripted channel: a real connection cannot be made to hit it on demand."""

from __future__ import annotations

import os

from deploy_runs.commands import cmd
from deploy_runs.remote import RemoteHost, ServerAddress


class Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def command(self, text: str) -> None:
        pass

    def line(self, stream: str, text: str) -> None:
        self.lines.append((stream, text))

    def flush(self) -> None:
        pass


class LateChannel:
    """Has `first` buffered at once; `last` and EOF arrive just after the loop's first read of
    stderr finds nothing, as the transport thread may deliver them."""

    def __init__(self, first: bytes, last: bytes) -> None:
        self.stdout, self.last = first, last
        self.eof_received = False
        self.closed = False
        self._stderr_checks = 0
        self._fd_r, self._fd_w = os.pipe()
        os.write(self._fd_w, b"x")  # select() on the channel returns at once

    def exec_command(self, command: str) -> None:
        pass

    def recv_ready(self) -> bool:
        return bool(self.stdout)

    def recv(self, n: int) -> bytes:
        out, self.stdout = self.stdout[:n], self.stdout[n:]
        return out

    def recv_stderr_ready(self) -> bool:
        self._stderr_checks += 1
        if self._stderr_checks == 2 and self.last is not None:
            # the transport thread: the rest of the output, then EOF
            self.stdout, self.last = self.stdout + self.last, None
            self.eof_received = True
        return False

    def recv_stderr(self, n: int) -> bytes:
        raise AssertionError("no stderr in this script")

    def fileno(self) -> int:
        return self._fd_r

    def exit_status_ready(self) -> bool:
        return self.eof_received

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd_r)
            os.close(self._fd_w)


class Transport:
    def __init__(self, channel: LateChannel) -> None:
        self.channel = channel

    def is_active(self) -> bool:
        return True

    def open_session(self, timeout: float | None = None) -> LateChannel:
        return self.channel


class Client:
    def __init__(self, channel: LateChannel) -> None:
        self._transport = Transport(channel)

    def get_transport(self) -> Transport:
        return self._transport

    def close(self) -> None:
        pass


def test_output_and_eof_arriving_together_after_an_empty_read_are_all_read():
    channel = LateChannel(b"line 1\nline 2\n", b"line 3\nline 4\n")
    host = RemoteHost(ServerAddress("127.0.0.1", 22, "deploy", "unused-key", None))
    host._client = Client(channel)  # type: ignore[assignment]
    sink = Sink()
    result = host.run(cmd("sh", "-c", "for i in 1 2 3 4; do echo line $i; done"), sink)
    assert result.exit_code == 0
    assert sink.lines == [("stdout", f"line {i}") for i in range(1, 5)]
