"""A client that asks an HTTP port again and again, each time on a new connection, and keeps
every answer: what the proxy tests and bench/redeploy.py count failed requests with."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Answer:
    at: float
    body: str | None  # None: the request failed
    error: str = ""


@dataclass
class Client:
    """Asks `host:port/` every `interval` seconds in a thread, a new connection each time."""

    host: str
    port: int
    interval: float = 0.01
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode()
                if response.status == 200:
                    self.answers.append(Answer(started, body))
                else:
                    self.answers.append(Answer(started, None, f"HTTP {response.status}"))
            except (OSError, http.client.HTTPException) as exc:
                self.answers.append(Answer(started, None, repr(exc)))
            finally:
                conn.close()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> list[Answer]:
        self._stop.set()
        self._thread.join(timeout=10)
        return list(self.answers)

    def count(self) -> int:
        return len(self.answers)
