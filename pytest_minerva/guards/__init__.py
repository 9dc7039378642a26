"""Keep a crashing, hanging or memory-hungry engine from taking the test session down.

:meth:`pytest_minerva.session.MinervaSession.build_backend` applies three guards to every
backend it loads: time limits on each load and step (:mod:`~pytest_minerva.guards.limits`,
with the :mod:`~pytest_minerva.guards.watchdog` for native code that never returns), a
memory check before the load and out-of-memory errors with figures
(:mod:`~pytest_minerva.guards.memory`), and, for engines that run native code, isolation in
a worker process (:mod:`~pytest_minerva.guards.isolated`, which talks to
:mod:`~pytest_minerva.guards.worker` through :mod:`~pytest_minerva.guards.process` in the
format of :mod:`~pytest_minerva.guards.protocol`) so that a crash fails one test; a backend
loaded in this process instead gets :mod:`~pytest_minerva.guards.in_process`. This module
only re-exports the names the rest of pytest-minerva uses.
"""

from __future__ import annotations

from pytest_minerva.guards.in_process import GuardedBackend, load_guarded
from pytest_minerva.guards.isolated import (
    MAX_CONSECUTIVE_CRASHES,
    IsolatedBackend,
    WorkerCrashed,
    WorkerPool,
    query_worker,
)
from pytest_minerva.guards.limits import BackendTimeout, Limits, time_limit
from pytest_minerva.guards.memory import (
    NotEnoughMemory,
    OutOfMemory,
    artifact_bytes,
    available_memory,
    check_memory,
    needed_memory,
)
from pytest_minerva.guards.process import WorkerProcess, describe_exit, worker_environment
from pytest_minerva.guards.protocol import (
    ProtocolError,
    decode_array,
    protocol_input,
    protocol_output,
    read_message_blocking,
    spec_to_json,
    write_message,
)
from pytest_minerva.guards.watchdog import keep_stderr

__all__ = [
    "MAX_CONSECUTIVE_CRASHES",
    "BackendTimeout",
    "GuardedBackend",
    "IsolatedBackend",
    "Limits",
    "NotEnoughMemory",
    "OutOfMemory",
    "ProtocolError",
    "WorkerCrashed",
    "WorkerPool",
    "WorkerProcess",
    "artifact_bytes",
    "available_memory",
    "check_memory",
    "decode_array",
    "describe_exit",
    "keep_stderr",
    "load_guarded",
    "needed_memory",
    "protocol_input",
    "protocol_output",
    "query_worker",
    "read_message_blocking",
    "spec_to_json",
    "time_limit",
    "worker_environment",
    "write_message",
]
