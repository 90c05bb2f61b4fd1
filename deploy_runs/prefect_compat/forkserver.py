"""Imported only by the warm worker's fork server (`warm_worker.PRELOAD`), never by the worker
itself: the fork server ignores SIGTERM. Covers Prefect 3.9.0-3.9.1 (the process manager
signals every run on worker exit).

Stopping a worker signals its process group, the fork server included. A fork server that
died at once closed the pipe on which the worker waits for each run's exit status, and the
worker read that as the run's exit (multiprocessing reports 255): it recorded a run that was
still deploying as crashed ("Process exited with status code: 255"), before its own shutdown
could leave the run going (`deploy_runs.prefect_compat.warm_worker.detach`). Ignoring SIGTERM, the fork server
ends as multiprocessing ends it: when the worker has exited (its end of a pipe closes). It
already ignores SIGINT (multiprocessing). Each run's process restores SIGTERM's default
first thing (`deploy_runs.prefect_compat.warm_worker.run_engine`)."""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
