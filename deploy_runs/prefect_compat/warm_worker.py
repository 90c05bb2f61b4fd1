"""A Prefect process worker whose flow-run processes start warm.

Prefect 3.9.1's process worker starts every flow run as new Python processes (a workspace
supervisor, then `python -m prefect.engine`): an interpreter start and `import prefect` each
time, ~2.5 s of a run's trigger latency on a 2-core machine (Submitting -> Running). This worker
forks each run's process instead from a server process that has already imported Prefect and
the deploy flow (the standard library's multiprocessing "forkserver"), and runs Prefect's own
engine entry point (`prefect.engine` as `__main__`) there: the same code as the stock
subprocess, without the start-up. Everything else is Prefect's process worker: polling,
concurrency, cancellation and crash reporting (the run's process is registered with Prefect's
process manager and control channel as usual).

Serves `process` work pools (`deploy-runs worker --pool NAME`). Served the stock way: runs of
deployments whose flow is not in a preloaded module by module path, pools whose job template
sets its own `command`, and jobs whose env sets what only a new interpreter reads (`PYTHON*`,
`LD_*`, `TZ`). A warm run's output goes to the worker's own output (the job's `stream_output`
is not consulted). The preloaded code is what was installed when the worker started: restart
the worker after upgrading deploy-runs (as with any long-lived process).
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import multiprocessing.context
import os
import runpy
import shutil
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.flows import load_flow_from_flow_run
from prefect.logging import get_logger
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._process_manager import ProcessHandle, create_isolated_termination_scope
from prefect.settings import get_current_settings
from prefect.utilities.processutils import sanitize_subprocess_env
from prefect.workers.process import (
    ProcessJobConfiguration,
    ProcessWorker,
    ProcessWorkerResult,
)
from pydantic import PrivateAttr

from deploy_runs.prefect_compat.tls import share_tls_context

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.runner._control_channel import ControlChannel

# Imported once by the fork server; each run's process starts with them in memory.
PRELOAD = ["deploy_runs.prefect_compat.forkserver", "deploy_runs.prefect_compat.warm_worker",
           "prefect.engine", "prefect.flow_engine", "flows.deploy"]

_context: multiprocessing.context.ForkServerContext | None = None


def fork_context() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def warm_up() -> None:
    """Start the fork server and wait until it has imported PRELOAD (a first process started
    on a cold server would wait for those imports)."""
    process = fork_context().Process(target=_nothing, name="deploy-runs-warm-up")
    process.start()
    process.join()


def _nothing() -> None:
    pass


def run_engine(env: dict[str, str], cwd: str) -> None:
    """A run's process (forked from the fork server): take the run's environment, then run
    Prefect's engine entry point as `python -m prefect.engine` would."""
    # SIGTERM as a new process has it (the fork server ignores it: deploy_runs.prefect_compat.forkserver)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Its own process group, as Prefect gives a run's process: cancelling the run signals the
    # group, and a signal to the worker's group does not reach the run directly.
    os.setsid()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    # Settings read in other threads (log and event shipping) come from the global context,
    # and logging was configured, at import time in the fork server: redo both from this
    # run's environment.
    refresh_global_settings_context()
    setup_logging(incremental=False)
    sys.argv = sys.argv[:1]  # the engine reads the run id from PREFECT__FLOW_RUN_ID
    share_tls_context()  # before the engine makes its first API client (see tls.py)
    try:
        with warnings.catch_warnings():
            # runpy warns that prefect.engine is already imported: that is the point here
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
            runpy.run_module("prefect.engine", run_name="__main__", alter_sys=False)
    finally:
        # A multiprocessing child ends with os._exit: run what Prefect registered to happen
        # at exit (its log and event workers send what they still hold).
        atexit._run_exitfuncs()


class WarmStarter:
    """A `ProcessStarter` (Prefect's runner protocol) that forks the run's process from the
    fork server. The run's environment is built as Prefect's engine-command starter builds it
    (the job's env over the worker's settings, as the process worker's default path does)."""

    def __init__(self, *, cwd: Path, env: dict[str, str | None],
                 control_channel: ControlChannel | None) -> None:
        self._cwd = cwd
        self._env = env
        self._control_channel = control_channel

    def environment(self, flow_run: FlowRun, control: dict[str, str]) -> dict[str, str]:
        env: dict[str, str | None] = dict(os.environ)
        env.update(get_current_settings().to_environment_variables(exclude_unset=True))
        env.update(self._env)
        env.update({
            "PREFECT__FLOW_RUN_ID": str(flow_run.id),
            "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
            **control,
        })
        return sanitize_subprocess_env(env)  # drops None-valued variables

    async def start(self, flow_run: FlowRun,
                    task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
                    ) -> None:
        control: dict[str, str] = {}
        registered = False
        if self._control_channel is not None:
            try:
                port, token = self._control_channel.register(flow_run.id)
                control = {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
                registered = True
            except RuntimeError:  # no loopback listener: Prefect falls back to kill-only
                pass
        handed_off = False
        try:
            process = fork_context().Process(
                target=run_engine, args=(self.environment(flow_run, control), str(self._cwd)),
                name=f"flow-run-{flow_run.id}")
            # Started and waited for on the event loop's thread: multiprocessing's bookkeeping
            # of children is not thread-safe (a start in one thread may read the exit status
            # another thread waits for), and a wait on the sentinel can be cancelled when the
            # worker shuts down (a thread joining the process could not).
            process.start()  # a few ms: the fork server forks
            task_status.started(ProcessHandle(
                process, termination_scope=create_isolated_termination_scope(process.pid)))
            handed_off = True
            await anyio.wait_readable(process.sentinel)
            process.join()
        except BaseException:
            if registered and not handed_off and self._control_channel is not None:
                self._control_channel.unregister(flow_run.id)
            raise


def preloaded_entrypoint(entrypoint: str | None) -> bool:
    """Whether a deployment's entrypoint is a flow in a preloaded module, by module path
    (`flows.deploy.deploy_app` or `flows.deploy:deploy_app`; a file path is loaded from a
    workspace Prefect prepares, so it is not)."""
    if not entrypoint or "/" in entrypoint or entrypoint.endswith(".py") or ".py:" in entrypoint:
        return False
    module = entrypoint.split(":", 1)[0] if ":" in entrypoint else entrypoint.rpartition(".")[0]
    return module in PRELOAD


def _read_at_start(name: str) -> bool:
    """Environment the interpreter (or the C library) reads only when a process starts."""
    return name.startswith(("PYTHON", "LD_")) or name == "TZ"


class WarmJobConfiguration(ProcessJobConfiguration):
    """A process job that remembers its deployment's entrypoint (Prefect hands the deployment
    to the configuration as it prepares the job: no second read of it per run)."""

    _entrypoint: str | None = PrivateAttr(default=None)

    def prepare_for_flow_run(self, flow_run: FlowRun, deployment: DeploymentResponse | None = None,
                             *args: Any, **kwargs: Any) -> None:
        self._entrypoint = deployment.entrypoint if deployment is not None else None
        super().prepare_for_flow_run(flow_run, deployment, *args, **kwargs)


class WarmProcessWorker(ProcessWorker):
    """Prefect's process worker, with flow-run processes forked warm (see the module)."""

    type = "process"  # serves process work pools
    job_configuration = WarmJobConfiguration
    _display_name = "Process (warm start)"
    _description = "Process worker whose flow-run processes are forked with Prefect and the " \
                   "deploy flow already imported."

    @classmethod
    def __dispatch_key__(cls) -> str:
        # Prefect's registry maps a key to one worker class: keep "process" for Prefect's own
        return "deploy-runs-warm-process"

    @staticmethod
    def warm_start_applies(configuration: ProcessJobConfiguration) -> bool:
        """Warm only what a warm process runs exactly as a new one would: a deployment whose
        flow is imported by module path from a preloaded module, a pool without its own
        command, and a job environment that changes nothing read only at interpreter start."""
        if configuration._command_configured:
            return False
        if any(_read_at_start(k) and v != os.environ.get(k)
               for k, v in (configuration.env or {}).items()):
            return False
        return preloaded_entrypoint(getattr(configuration, "_entrypoint", None))

    async def setup(self) -> None:
        await super().setup()
        await anyio.to_thread.run_sync(warm_up)

    async def run(self, flow_run: FlowRun, configuration: ProcessJobConfiguration,
                  task_status: anyio.abc.TaskStatus[int] | None = None) -> ProcessWorkerResult:
        if not self.warm_start_applies(configuration):
            return await super().run(flow_run, configuration, task_status)
        task_status = task_status or anyio.TASK_STATUS_IGNORED
        # the run's working directory outlives a worker that stops while the run goes on
        cwd = configuration.working_dir or Path(tempfile.mkdtemp(suffix="prefect"))
        execution: FlowRunExecutionResult | None = None
        async with FlowRunExecutorContext() as ctx:
            starter = WarmStarter(cwd=Path(cwd).resolve(), env=configuration.env,
                                  control_channel=ctx.control_channel)
            executor = ctx.create_executor(flow_run, starter,
                                           resolve_flow=load_flow_from_flow_run,
                                           propose_submitting=False)

            async def execute(*, task_status: anyio.abc.TaskStatus[ProcessHandle]
                              = anyio.TASK_STATUS_IGNORED) -> None:
                nonlocal execution
                execution = await executor.submit(task_status=task_status)

            try:
                async with anyio.create_task_group() as group:
                    handle = await group.start(execute)
                    if handle.pid is None:
                        raise RuntimeError("Flow run process has no PID")
                    task_status.started(handle.pid)
            except anyio.get_cancelled_exc_class():
                # The worker is stopping (an upgrade, a restart): the run goes on and records
                # its own end, instead of being killed half-way by Prefect's process manager.
                with anyio.CancelScope(shield=True):
                    await detach(ctx, flow_run)
                raise
        if not configuration.working_dir:
            shutil.rmtree(cwd, ignore_errors=True)
        if execution is None or execution.status_code is None:
            raise RuntimeError("Failed to start flow run process.")
        return ProcessWorkerResult(status_code=execution.status_code,
                                   identifier=str(execution.handle.pid))


async def detach(ctx: FlowRunExecutorContext, flow_run: FlowRun) -> None:
    """Leave a run's process running when its worker stops.

    Prefect's process worker (3.9) kills every run it started when it stops: its process
    manager sends SIGTERM on exit, the engine then records the run Crashed ("Execution was
    cancelled by the runtime environment") while the flow body (a thread) goes on, so a run
    that deployed the app ends recorded as failed. A deploy is worth finishing: the run's
    process is forgotten by the process manager (nothing is signalled) and by multiprocessing
    (whose exit handler would otherwise wait for it), and finishes on its own; Stop still
    reaches it through deploy-runs' own control (controls.py)."""
    handle = ctx.process_manager.get(flow_run.id)
    await ctx.process_manager.remove(flow_run.id)
    for child in multiprocessing.active_children():
        if handle is not None and child.pid == handle.pid:
            multiprocessing.process._children.discard(child)  # type: ignore[attr-defined]
    get_logger("deploy_runs.prefect_compat.warm_worker").info(
        "The worker is stopping; flow run %s goes on without it (PID %s).", flow_run.id,
        handle.pid if handle is not None else "?")


async def serve(pool: str, name: str | None = None, limit: int | None = None,
                **options: Any) -> None:
    """Run a warm-start worker on `pool` until it is interrupted (as `prefect worker start`)."""
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS
    from prefect.utilities.processutils import setup_signal_handlers_worker

    setup_signal_handlers_worker(os.getpid(), "the deploy-runs worker", print)
    worker = WarmProcessWorker(name=name, work_pool_name=pool, limit=limit,
                               heartbeat_interval_seconds=int(
                                   PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
                               **options)
    try:
        await worker.start(printer=print)
    except asyncio.CancelledError:
        print(f"Worker {worker.name!r} stopped!")
