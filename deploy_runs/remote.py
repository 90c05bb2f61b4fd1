"""The one SSH executor: connect with a verified host key, run a command streaming its output
line by line, time it out, kill it on the server, upload files, open TCP channels for probes."""

from __future__ import annotations

import base64
import io
import re
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import paramiko

from deploy_runs.commands import PID_LINE_PREFIX, Command, kill_process_group, with_pgid_report
from deploy_runs.errors import (
    CommandFailed,
    CommandTimedOut,
    ConnectionFailed,
    ConnectionLost,
    HostKeyError,
    StepStopped,
)

TAIL_LINES = 40
KILL_TIMEOUT = 5.0  # the most a kill of a command on the server may take
# A line longer than this is handed on in pieces of this size as it arrives (LineSplitter)
MAX_LINE_BYTES = 65536
# A failure's output tail keeps at most this many characters of a line (head and end)
TAIL_LINE_CHARS = 2000
_CHUNK = 65536
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


class OutputSink(Protocol):
    """Receives what a command does as it happens."""

    def command(self, text: str) -> None: ...

    def line(self, stream: str, text: str) -> None: ...

    def part(self, stream: str, text: str) -> None:
        """A piece of a long line that goes on in the next `part` or `line` call."""

    def flush(self) -> None:
        """The server has nothing more to say for now: hand on what is buffered."""


@dataclass(frozen=True)
class ServerAddress:
    """What the executor needs to reach a server (a plain value, built from an SSHServer block)."""

    host: str
    port: int
    username: str
    private_key: str = field(repr=False)
    host_key: str | None = None
    accept_unknown_host_key: bool = False
    connect_timeout: float = 10.0

    @property
    def label(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"


@dataclass
class CommandResult:
    command: str
    exit_code: int
    tail: list[str]


class LinePart(str):
    """A piece of a line longer than `MAX_LINE_BYTES`; the line goes on in the next piece
    (a `LinePart` again, or a plain `str` that ends it)."""


class LineSplitter:
    """Turns a byte stream into text lines: \\n, \\r\\n and bare \\r (progress output) end a line.

    Linear in the stream's size with bounded memory: only new bytes (and at most one held
    piece) are searched for a line break, and a line longer than `max_line` bytes is handed
    on in pieces (`LinePart`, cut at a UTF-8 character boundary) as it arrives, so a
    newline-free stream is never held whole nor scanned again. Bytes that are not UTF-8 are
    kept visible as \\xNN escapes.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._buffer = b""
        self._in_long_line = False  # a piece was handed on and its line has not ended

    def feed(self, data: bytes) -> list[str]:
        data = self._buffer + data  # the buffer holds at most max_line bytes (+ a held \r)
        # A \r at the end of a chunk may be the first half of \r\n: the next chunk decides.
        held_cr = data.endswith(b"\r")
        parts = _LINE_BREAK.split(data[:-1] if held_cr else data)
        rest = parts.pop()
        lines: list[str] = [_decode(p) for p in parts]
        while len(rest) > self.max_line:
            cut = _char_boundary(rest, self.max_line)
            lines.append(LinePart(_decode(rest[:cut])))
            rest = rest[cut:]
        self._buffer = rest + b"\r" if held_cr else rest
        if lines:
            self._in_long_line = isinstance(lines[-1], LinePart)
        return lines

    def close(self) -> list[str]:
        rest, self._buffer = self._buffer, b""
        rest = rest.rstrip(b"\r")
        ends_a_line = bool(rest) or self._in_long_line
        self._in_long_line = False
        return [_decode(rest)] if ends_a_line else []


def _char_boundary(data: bytes, limit: int) -> int:
    """The largest cut <= limit that does not split a UTF-8 character (when the bytes are
    UTF-8; other bytes are cut at `limit`)."""
    for back in range(min(4, limit)):
        if data[limit - back] & 0xC0 != 0x80:  # not a continuation byte: a character starts
            return limit - back
    return limit


def clip_line(line: str, limit: int = TAIL_LINE_CHARS) -> str:
    """A line cut to `limit` characters for a failure's tail: its head and its end (where a
    long error line usually says what went wrong), and how much was left out."""
    if len(line) <= limit:
        return str(line)
    if isinstance(line, LinePart):  # its end is not known yet
        return f"{line[:limit]} [... line goes on]"
    half = limit // 2
    return f"{line[:half]} [... {len(line) - 2 * half} characters ...] {line[-half:]}"


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def public_key(line: str) -> paramiko.PKey:
    kind, blob = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


def _private_key(text: str) -> paramiko.PKey:
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    raise ConnectionFailed("the private key could not be read (" + "; ".join(errors) + ")")


def fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class _QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges what it receives at once.

    sshd sends small packets without TCP_NODELAY on a session with no terminal, so it holds
    its next packet until the last one is acknowledged, and Linux delays an acknowledgement
    up to 40 ms. That stalled the first command of every connection (the channel's opening
    waited for the acknowledgement of the messages sshd sends after authentication): measured
    on loopback, 45-50 ms -> 4 ms."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        # setting TCP_QUICKACK sends a pending acknowledgement now; Linux clears it again
        self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


def _open_socket(host: str, port: int, timeout: float) -> socket.socket:
    """The TCP connection for an SSH session, with TCP_NODELAY from the first packet (the key
    exchange sends small packets back to back: measured 61-110 ms -> 20 ms to connect on
    loopback) and, on Linux, acknowledgements sent at once (`_QuickAckSocket`)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not hasattr(socket, "TCP_QUICKACK"):
        return sock
    quick = _QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    quick.settimeout(timeout)
    return quick


def key_line(key: paramiko.PKey) -> str:
    """The key as a known_hosts / `host_key` value: `TYPE BASE64`."""
    return f"{key.get_name()} {key.get_base64()}"


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, accept: bool, notes: list[str]) -> None:
        self.accept = accept
        self.notes = notes
        self.accepted: paramiko.PKey | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if self.accept:  # trust on first use: the caller pins it (RemoteHost.first_seen_key)
            self.accepted = key
            self.notes.append(f"no host key was pinned for {hostname}: trusting the key it "
                              f"offered on first use, {fingerprint(key)}")
            return
        raise HostKeyError(
            f"{hostname} offered host key {fingerprint(key)}, but no host key is pinned for it; "
            "set the server's host_key (or opt in with accept_unknown_host_key)"
        )


class Cancel:
    """Given to commands running side by side: once `set` (from any thread), each of them is
    killed on the server and raises `Cancelled` (e.g. the other builds when one failed)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason


class Cancelled(StepStopped):
    """A command killed because its `Cancel` was set."""


class RemoteHost:
    """An open SSH connection to one server. Use as a context manager."""

    def __init__(self, address: ServerAddress) -> None:
        self.address = address
        self.notes: list[str] = []
        self.interrupted: str | None = None
        # A time limit over every command (the step's or the run's), set by the caller:
        # (time.monotonic() deadline, what to say when it passes).
        self.deadline: tuple[float, str] | None = None
        # process groups of the commands running now (several when steps run them side by
        # side, e.g. the services' builds)
        self._running: set[int] = set()
        self._client: paramiko.SSHClient | None = None
        # the host key accepted on first use (no key was pinned): the caller pins it
        self.first_seen_key: str | None = None

    def __enter__(self) -> RemoteHost:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Connection -----------------------------------------------------------------------------

    def connect(self) -> None:
        addr = self.address
        client = paramiko.SSHClient()
        policy = _HostKeyPolicy(addr.accept_unknown_host_key, self.notes)
        client.set_missing_host_key_policy(policy)
        expected = None
        if addr.host_key:
            expected = public_key(addr.host_key)
            entry = addr.host if addr.port == 22 else f"[{addr.host}]:{addr.port}"
            client.get_host_keys().add(entry, expected.get_name(), expected)
        try:
            sock = _open_socket(addr.host, addr.port, addr.connect_timeout)
            try:
                client.connect(
                    addr.host, port=addr.port, username=addr.username, sock=sock,
                    pkey=_private_key(addr.private_key), timeout=addr.connect_timeout,
                    banner_timeout=addr.connect_timeout, auth_timeout=addr.connect_timeout,
                    allow_agent=False, look_for_keys=False,
                )
            except BaseException:
                client.close()
                sock.close()
                raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                f"host key mismatch for {addr.label}: the server offered "
                f"{fingerprint(exc.key)}, expected {fingerprint(exc.expected_key)}. "
                "The server was reinstalled or someone is in the middle; refusing to connect."
            ) from None
        except paramiko.AuthenticationException as exc:
            raise ConnectionFailed(f"SSH authentication failed for {addr.label}: {exc}") from None
        except paramiko.SSHException as exc:
            if expected is not None and "host key" in str(exc).lower():
                raise HostKeyError(
                    f"{addr.label} offers no host key of the pinned type "
                    f"{expected.get_name()} (expected {fingerprint(expected)}): {exc}"
                ) from None
            if str(exc) == "No existing session" or "banner" in str(exc):
                # the TCP connection opened but no SSH server spoke within the timeout
                raise ConnectionFailed(
                    f"SSH connection to {addr.label} failed: no SSH answer within "
                    f"{addr.connect_timeout:g}s") from None
            raise ConnectionFailed(f"SSH connection to {addr.label} failed: {exc}") from None
        except (TimeoutError, OSError) as exc:
            raise ConnectionFailed(
                f"cannot reach {addr.label}: {exc.strerror or exc or type(exc).__name__}"
            ) from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        self._client = client
        if policy.accepted is not None:
            self.first_seen_key = key_line(policy.accepted)

    @property
    def transport(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"the SSH connection to {self.address.label} is closed")
        return transport

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # Commands --------------------------------------------------------------------------------

    def run(self, command: Command, sink: OutputSink, *, timeout: float | None = None,
            check: bool = True, quiet: bool = False,
            cancel: Cancel | None = None) -> CommandResult:
        """Run `command`, handing each output line to `sink` as the server prints it.

        The command's time limit is the caller's `deadline` (the step's, set by the step
        runner from the app's `timeouts`); `timeout` only narrows it for one command. The
        limit is checked on every pass of the read loop, so a command that prints without
        pause is killed at it too. On timeout, or if the caller is interrupted (Stop), the
        command's whole process group is killed on the server before the exception leaves
        this method.
        """
        text = str(command)
        if self.interrupted:
            raise StepStopped(self.interrupted)
        if not quiet:
            sink.command(text)
        try:
            channel = self.transport.open_session(timeout=self.address.connect_timeout)
            channel.exec_command(with_pgid_report(command))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectionLost(f"could not start a command on {self.address.label}: {exc}") \
                from None
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        streams = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        pgid: int | None = None

        in_long_line = {"stdout": False, "stderr": False}
        killed = False

        def emit(stream: str, lines: list[str]) -> None:
            nonlocal pgid
            for line in lines:
                if pgid is None and stream == "stderr" and line.startswith(PID_LINE_PREFIX):
                    pgid = int(line[len(PID_LINE_PREFIX):])
                    self._running.add(pgid)
                    continue
                if not in_long_line[stream]:  # a long line is in the tail by its start
                    tail.append(clip_line(line))
                in_long_line[stream] = isinstance(line, LinePart)
                if in_long_line[stream]:
                    sink.part(stream, line)
                else:
                    sink.line(stream, line)

        started = time.monotonic()
        deadline, why = float("inf"), ""
        if timeout is not None:
            deadline, why = started + timeout, f"command timed out after {timeout:g}s"
        if self.deadline is not None and self.deadline[0] < deadline:
            deadline, why = self.deadline
        try:
            while True:
                now = time.monotonic()
                if self.interrupted and (pgid is not None or now - started > 2):
                    killed = self._kill(pgid)
                    raise StepStopped(self.interrupted)
                if cancel is not None and cancel.reason and (pgid is not None or
                                                             now - started > 2):
                    killed = self._kill(pgid)
                    raise Cancelled(cancel.reason)
                if now > deadline:
                    killed = self._kill(pgid)
                    raise CommandTimedOut(text, None, list(tail),
                                          f"{why}; the command was killed on the server")
                # Read EOF before the buffers: paramiko's transport thread buffers all of the
                # output before it marks EOF, so output that arrives between a read finding
                # nothing and an EOF check made after it would be left behind (up to a window,
                # ~2 MB, of the command's last output).
                ended = channel.eof_received or channel.closed
                got = False
                if channel.recv_ready():
                    emit("stdout", streams["stdout"].feed(channel.recv(_CHUNK)))
                    got = True
                if channel.recv_stderr_ready():
                    emit("stderr", streams["stderr"].feed(channel.recv_stderr(_CHUNK)))
                    got = True
                if got:
                    continue
                sink.flush()
                if ended:
                    break
                if not self.is_connected():
                    raise ConnectionLost(self._lost(text))
                select.select([channel], [], [], 0.2)
            for name, splitter in streams.items():
                emit(name, splitter.close())
            sink.flush()
            exit_code = self._exit_status(channel, text, list(tail))
        except BaseException:
            sink.flush()  # every line received so far is kept
            # Interrupted (Stop, timeout, lost connection): leave nothing running on the server.
            if not killed and channel.exit_status_ready() is False:
                self._kill(pgid)
            channel.close()
            raise
        finally:
            self._running.discard(pgid)
        channel.close()
        if self.interrupted:
            raise StepStopped(self.interrupted)
        result = CommandResult(text, exit_code, list(tail))
        if check and exit_code != 0:
            raise CommandFailed(text, exit_code, list(tail))
        return result

    def interrupt(self, reason: str) -> None:
        """Stop: kill the running command on the server now; no further command starts.

        Safe to call from another thread than the one running the command.
        """
        self.interrupted = reason
        for pgid in list(self._running):
            self._kill(pgid)

    def is_connected(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def _exit_status(self, channel: paramiko.Channel, text: str, tail: list[str]) -> int:
        deadline = time.monotonic() + 10
        while not channel.exit_status_ready():
            if not self.is_connected() or time.monotonic() > deadline:
                raise ConnectionLost(self._lost(text))
            time.sleep(0.01)
        code = channel.recv_exit_status()
        if code == -1:
            # No exit status: the command died of a signal, or the connection went down under
            # it. The transport notices a dead peer a moment after the channel closes.
            gone = time.monotonic() + 1.0
            while time.monotonic() < gone:
                if not self.is_connected():
                    raise ConnectionLost(self._lost(text))
                time.sleep(0.02)
            raise CommandFailed(text, None, tail, "command was killed by a signal "
                                                  "(it reported no exit code)")
        return code

    def _lost(self, text: str) -> str:
        return (f"the SSH connection to {self.address.label} was lost while running "
                f"$ {text}; every line received before that is kept in the log")

    def _kill(self, pgid: int | None) -> bool:
        """Kill a command's process group on the server; best effort, never raises. True
        when a kill was sent."""
        if pgid is None:
            return False
        kill = str(kill_process_group(pgid))
        try:
            if self.is_connected():
                channel = self.transport.open_session(timeout=KILL_TIMEOUT)
                channel.exec_command(kill)
                # bounded: a server that never answers must not hold the step here
                ends = time.monotonic() + KILL_TIMEOUT
                while not channel.exit_status_ready() and time.monotonic() < ends:
                    time.sleep(0.01)
                channel.close()
                return True
            with RemoteHost(self.address) as fresh:
                fresh.run(kill_process_group(pgid), _NullSink(), timeout=KILL_TIMEOUT,
                          check=False, quiet=True)
        except Exception:
            pass
        return True

    # Files and ports -------------------------------------------------------------------------

    def write_file(self, path: str, content: bytes, mode: int = 0o600,
                   timeout: float = 60.0) -> None:
        """Write a file on the server over SFTP, set to `mode` before any byte is written
        (a file with secrets goes in a directory only its owner may enter, so it is never
        readable by others, not even before that). The whole write takes at most `timeout`
        seconds and never outlasts the step's limit, however slowly the server answers."""
        limit, why = timeout, f"writing {path} over SFTP took longer than {timeout:g}s"
        if self.deadline is not None and self.deadline[0] - time.monotonic() < limit:
            limit, why = self.deadline[0] - time.monotonic(), self.deadline[1]
        if limit <= 0:
            raise CommandTimedOut(f"sftp put {path}", None, [], why)
        channel = self.transport.open_session(timeout=min(limit, self.address.connect_timeout))
        channel.settimeout(limit)
        # an overall deadline: a server that answers a byte at a time stays under any
        # per-read timeout, so the channel is closed under it when the time is up
        watchdog = threading.Timer(limit, channel.close)
        watchdog.start()
        try:
            channel.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(channel)
            with sftp.open(path + ".tmp", "wb") as handle:
                handle.chmod(mode)
                handle.write(content)
            sftp.posix_rename(path + ".tmp", path)
        except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError) as exc:
            if not watchdog.is_alive() or isinstance(exc, TimeoutError):
                raise CommandTimedOut(f"sftp put {path}", None, [],
                                      f"{why}; writing {path} was abandoned") from None
            raise ConnectionLost(f"could not write {path} on {self.address.label}: {exc}") \
                from None
        finally:
            watchdog.cancel()
            channel.close()

    def open_tcp(self, host: str, port: int, timeout: float = 5.0) -> paramiko.Channel:
        """A TCP connection made by the server to host:port (a direct-tcpip channel)."""
        return self.transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0),
                                           timeout=timeout)


class _NullSink:
    def command(self, text: str) -> None:
        pass

    def line(self, stream: str, text: str) -> None:
        pass

    def part(self, stream: str, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class CollectingSink:
    """A sink that keeps what it receives; also forwards to another sink when given one."""

    def __init__(self, forward: OutputSink | None = None) -> None:
        self.forward = forward
        self.lines: list[tuple[str, str]] = []
        self._parts: dict[str, list[str]] = {}

    def command(self, text: str) -> None:
        if self.forward:
            self.forward.command(text)

    def line(self, stream: str, text: str) -> None:
        parts = self._parts.pop(stream, None)
        self.lines.append((stream, "".join(parts) + text if parts else text))
        if self.forward:
            self.forward.line(stream, text)

    def part(self, stream: str, text: str) -> None:
        self._parts.setdefault(stream, []).append(text)
        if self.forward:
            self.forward.part(stream, text)

    def flush(self) -> None:
        if self.forward:
            self.forward.flush()

    def stdout(self) -> str:
        return "\n".join(text for stream, text in self.lines if stream == "stdout")

