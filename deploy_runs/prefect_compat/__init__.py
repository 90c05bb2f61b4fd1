"""The seam to Prefect: every use of Prefect's internals and every workaround of its behaviour.

Product code (the rest of deploy_runs, flows, blocks) uses Prefect's public API and this
package only (tests/unit/test_seam_boundary.py checks it). Each piece says which Prefect
behaviour it covers, for which versions, and the upstream issue where one exists;
tests/unit/test_prefect_seam.py exercises exactly what each piece relies on (private names,
copied code) and fails naming the piece when Prefect changes underneath. CI runs the unit tests
against the oldest and the newest Prefect the pin allows.

Every piece covers Prefect 3.9.0 and 3.9.1 (both checked):
- `tls`: a new TLS context per API client (PrefectHQ/prefect#19106, open);
- `busy_sqlite`: SQLite read-then-write requests begun deferred (busy 503s, each costing a 2 s
  client back-off); `database_away`: a database that does not answer is a 500, never retried;
  `server_app`: Prefect's server app with both;
- `log_delivery`: the log worker's drain stops it (a new worker per step), records ordered by
  time only, an empty traceback under each failed step;
- `warm_worker`: a new interpreter per flow run (~2.5 s), runs killed when their worker stops;
  `forkserver`: the fork server killed with its worker's process group;
- `sync_calls`: sync-compatible calls that hand back a coroutine in the flow's step thread;
- `ui_history`: light run rows from the UI's own history route.

Code copied from Prefect, by the source of what it copies (sha256 of `inspect.getsource`, first
16 hex digits, per Prefect version it was checked against):
"""

COPIED: dict[str, tuple[str, str, dict[str, str]]] = {
    # what is copied: (where in Prefect, where here, {Prefect version: source hash})
    "APILogHandler.emit": ("prefect.logging.handlers", "log_delivery.StepLogHandler.emit",
                           {"3.9.0": "8d445086f3cf11d9", "3.9.1": "8d445086f3cf11d9"}),
    "BatchedQueueService._main_loop": ("prefect._internal.concurrency.services",
                                       "log_delivery.StepLogWorker._send_batches",
                                       {"3.9.0": "c672a30493c0b465", "3.9.1": "c672a30493c0b465"}),
    "ProcessWorker.run": ("prefect.workers.process", "warm_worker.WarmProcessWorker.run",
                          {"3.9.0": "05306468a6b3266b", "3.9.1": "05306468a6b3266b"}),
}
