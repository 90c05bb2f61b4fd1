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


class FloodChannel:
    """Always has output waiting (a command printing without pause); records what was run
    on the server besides the command itself (the kill of its process group)."""

    def __init__(self) -> None:
        self.eof_received = False
        self.closed = False
        self.sent_pgid = False
        self.reads = 0

    def exec_command(self, command: str) -> None:
        pass

    def recv_ready(self) -> bool:
        return True

    def recv(self, n: int) -> bytes:
        self.reads += 1
        return b"y\n" * 1000

    def recv_stderr_ready(self) -> bool:
        return not self.sent_pgid

    def recv_stderr(self, n: int) -> bytes:
        self.sent_pgid = True
        return b"__deploy_runs_pgid=4242\n"

    def exit_status_ready(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


class FloodTransport:
    def __init__(self, channel: FloodChannel) -> None:
        self.channel = channel
        self.kills: list[str] = []

    def is_active(self) -> bool:
        return True

    def open_session(self, timeout: float | None = None):
        if self.channel.closed or self.channel.reads:  # a second session: the kill
            transport = self

            class Kill:
                def exec_command(self, command: str) -> None:
                    transport.kills.append(command)

                def recv_exit_status(self) -> int:
                    return 0

                def close(self) -> None:
                    pass

            return Kill()
        return self.channel


def test_a_command_that_prints_without_pause_is_killed_at_its_deadline():
    import time

    import pytest

    from deploy_runs.errors import CommandTimedOut

    channel = FloodChannel()
    transport = FloodTransport(channel)
    host = RemoteHost(ServerAddress("127.0.0.1", 22, "deploy", "unused-key", None))
    host._client = type("C", (), {"get_transport": lambda self: transport})()  # type: ignore
    host.deadline = (time.monotonic() + 0.3, "step timed out after 0.3s (timeouts.build)")
    sink = Sink()
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        host.run(cmd("yes"), sink)
    assert time.monotonic() - started < 5  # not hours: the flood did not hide the deadline
    assert "step timed out after 0.3s (timeouts.build)" in str(caught.value)
    assert transport.kills == ["kill -KILL -- -4242"]  # the process group, on the server
    assert channel.reads > 1 and sink.lines[:2] == [("stdout", "y"), ("stdout", "y")]


class QuietChannel(FloodChannel):
    """A command that prints nothing for `passes` passes of the read loop, then ends."""

    def __init__(self, passes: int) -> None:
        super().__init__()
        self.passes = passes
        self._fd_r, self._fd_w = os.pipe()
        os.write(self._fd_w, b"x")  # select() on the channel returns at once

    def recv_ready(self) -> bool:
        self.passes -= 1
        if self.passes <= 0:
            self.eof_received = True
        return False

    def fileno(self) -> int:
        return self._fd_r

    def exit_status_ready(self) -> bool:
        return self.eof_received

    def recv_exit_status(self) -> int:
        return 0


def test_the_step_limit_is_the_only_limit_of_a_command(monkeypatch):
    # a build step allowed an hour (timeouts.build: 3600) runs a 40-minute command: nothing
    # kills it at the old hidden 1800 s per-command cap. The clock moves a minute a pass.

    from deploy_runs import remote

    now = [1000.0]

    def clock() -> float:
        now[0] += 60
        return now[0]

    monkeypatch.setattr(remote.time, "monotonic", clock)
    channel = QuietChannel(passes=40)
    transport = FloodTransport(channel)
    host = RemoteHost(ServerAddress("127.0.0.1", 22, "deploy", "unused-key", None))
    host._client = type("C", (), {"get_transport": lambda self: transport})()  # type: ignore
    host.deadline = (now[0] + 3600, "step timed out after 3600s (timeouts.build)")
    assert host.run(cmd("docker", "build", "."), Sink()).exit_code == 0
    assert now[0] - 1000 > 1800 and transport.kills == []


def test_steps_leave_command_limits_to_the_step():
    # one place states each step's limit (the app's timeouts): no step gives a command a
    # limit of its own
    import ast
    from pathlib import Path

    steps = Path(__file__).resolve().parents[2] / "deploy_runs" / "steps"
    capped = []
    for path in steps.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "run" \
                    and any(k.arg == "timeout" for k in node.keywords):
                capped.append(f"{path.name}:{node.lineno}")
    assert capped == []


class DripChannel:
    """A server's channel that sends a byte every 0.05 s for ever and never ends (as a server
    that answers a byte at a time would), until it is closed."""

    def __init__(self) -> None:
        import threading

        self.closed = threading.Event()
        self.timeout: float | None = None
        self.sent = list(b"\x00\x00\x10\x00")  # an SFTP packet of 4,096 bytes is coming

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def invoke_subsystem(self, name: str) -> None:
        pass

    def send(self, data: bytes) -> int:
        return len(data)

    def sendall(self, data: bytes) -> None:
        pass

    def recv(self, n: int) -> bytes:
        if self.closed.wait(0.05):
            return b""
        return bytes([self.sent.pop(0) if self.sent else 1])  # within any per-read timeout

    def exit_status_ready(self) -> bool:
        return False  # the server never says the kill ended

    def exec_command(self, command: str) -> None:
        pass

    def close(self) -> None:
        self.closed.set()


def test_a_file_write_to_a_server_answering_a_byte_at_a_time_ends_at_its_deadline():
    import time

    import pytest

    from deploy_runs.errors import CommandTimedOut

    channel = DripChannel()
    transport = type("T", (), {"is_active": lambda self: True,
                               "open_session": lambda self, timeout=None: channel})()
    host = RemoteHost(ServerAddress("127.0.0.1", 22, "deploy", "unused-key", None))
    host._client = type("C", (), {"get_transport": lambda self: transport})()  # type: ignore
    host.deadline = (time.monotonic() + 0.5, "step timed out after 0.5s (timeouts.start)")
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        host.write_file("deploy-runs/apps/x/secrets/web.env", b"A=1\n")
    assert time.monotonic() - started < 2
    assert "step timed out after 0.5s (timeouts.start); writing" in str(caught.value)
    assert channel.closed.is_set()


def test_the_kill_of_a_command_waits_for_the_server_a_bounded_time(monkeypatch):
    import time

    from deploy_runs import remote

    monkeypatch.setattr(remote, "KILL_TIMEOUT", 0.3)
    channel = DripChannel()
    transport = type("T", (), {"is_active": lambda self: True,
                               "open_session": lambda self, timeout=None: channel})()
    host = RemoteHost(ServerAddress("127.0.0.1", 22, "deploy", "unused-key", None))
    host._client = type("C", (), {"get_transport": lambda self: transport})()  # type: ignore
    started = time.monotonic()
    assert host._kill(4242) is True
    assert time.monotonic() - started < 1.5 and channel.closed.is_set()
