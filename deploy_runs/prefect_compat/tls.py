"""One TLS context for all of a process's Prefect API clients.

Prefect 3.9 builds a new `ssl.SSLContext` from a CA file (certifi's bundle, or
`PREFECT_API_SSL_CERT_FILE`) for every API client it makes, even for an `http://` API: about
16 ms of CPU each, most of a client's 22 ms (measured here). A deploy run's process makes about
six (the engine's, two for the server's default result storage, the step thread's, the stop
watcher's, the lease renewal's), three of them one after another as the run starts: ~0.1 s of
CPU per run on a 2-core machine where the run is CPU-bound. Prefect cannot be given a context
for the clients it makes itself (a pull request to allow it, PrefectHQ/prefect#19106, is open).

`share_tls_context()` makes Prefect's client module reuse one verified context per CA file.
A context is the part of TLS meant to be shared by connections (settings and trusted
certificates), and Prefect does not change a verified context after making it. Any other
context Prefect asks for (the unverified one of `PREFECT_API_TLS_INSECURE_SKIP_VERIFY`, which
it does change) is made anew each time, as before. A CA file changed on disk is read again by
the next process, not by this one. Applied in a worker's flow-run process only, where every
client is Prefect's: by the warm worker before Prefect's engine starts, by the deploy flow
when it starts in a stock worker's process (never on import, never in a user's process): a
client made with its own settings (e.g. a client certificate, which httpx loads into the
context it is given) must not share the context.
"""

from __future__ import annotations

import functools
import os
import ssl
import types


@functools.lru_cache(maxsize=8)
def _verified_context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


def _create_default_context(purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, *,
                            cafile: str | None = None, capath: str | None = None,
                            cadata: str | bytes | None = None) -> ssl.SSLContext:
    if purpose == ssl.Purpose.SERVER_AUTH and cafile and capath is None and cadata is None:
        return _verified_context(str(cafile))
    return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)


class _SharedContextSSL(types.ModuleType):
    """`ssl` as Prefect's client module sees it: the same, but for `create_default_context`."""

    create_default_context = staticmethod(_create_default_context)

    def __getattr__(self, name: str) -> object:
        return getattr(ssl, name)


def share_tls_context_in_run_process() -> None:
    """`share_tls_context()` in a flow-run process a worker started (Prefect's engine entry
    point, which reads the run's id from PREFECT__FLOW_RUN_ID); nothing in any other process."""
    if os.environ.get("PREFECT__FLOW_RUN_ID"):
        share_tls_context()


def share_tls_context() -> None:
    """Make Prefect's API clients in this process share their verified TLS context."""
    import prefect.client.orchestration as orchestration

    if not isinstance(orchestration.ssl, _SharedContextSSL):
        orchestration.ssl = _SharedContextSSL("ssl")
