"""Crash recovery for runs btc-anomaly executes in its own process (``execute_in_process``).

A run the CLI executes lives in the CLI's process. Killed (SIGKILL, OOM, a closed laptop lid), it
stays STARTED in the instance and keeps the ``duckdb`` pool slot its step had claimed, so the next
run's step waits for that slot forever; Dagster's run monitoring cannot see it (the default run
launcher has no worker health check). So:

- ``launch_tags()`` tags every run the CLI starts with the host, pid and the pid's start time;
- ``recover_dead_runs()``, at the CLI's next start, finds STARTED/STARTING runs tagged by a
  process on this host that is gone (or whose pid now belongs to another process), marks each
  failed (``instance.report_run_failed``), frees the pool slots it still holds (the storage's
  ``free_concurrency_slots_for_run``, the call behind the UI's "free concurrency slots" button)
  and prints one line per run;
- ``report_pool_waits()`` prints, while a run executes, which step waits for which pool and who
  holds the slot (Dagster itself only writes "Step blocked by limit for pool" to the run's log).

Runs started elsewhere (the daemon, the UI, another host) are never touched.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg

LAUNCHER_TAG = "btc/launcher"  # "<host>|<pid>|<pid start time in clock ticks>"
WAIT_REPORT_INTERVAL_SECONDS = 30.0
WAIT_POLL_SECONDS = 2.0
_ACTIVE = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]


def _pid_start_ticks(pid: int) -> str:
    """The process's start time (field 22 of /proc/<pid>/stat): tells a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def launch_tags() -> dict[str, str]:
    """Tags for a run this process executes, so a later btc-anomaly can tell whether it is still alive."""
    pid = os.getpid()
    return {LAUNCHER_TAG: f"{socket.gethostname()}|{pid}|{_pid_start_ticks(pid)}"}


@dataclass(frozen=True)
class Launcher:
    host: str
    pid: int
    start_ticks: str

    @classmethod
    def parse(cls, tag: str | None) -> Launcher | None:
        parts = (tag or "").split("|")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    def alive(self) -> bool | None:
        """True/False for a process on this host; None when it ran elsewhere (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        current = _pid_start_ticks(self.pid)
        return not (self.start_ticks and current and current != self.start_ticks)


def _slots_held(instance: dg.DagsterInstance, run_id: str) -> dict[str, int]:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    held: dict[str, int] = {}
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        count = sum(1 for slot in info.claimed_slots if slot.run_id == run_id)
        if count:
            held[pool] = count
    return held


def recover_dead_runs(instance: dg.DagsterInstance | None = None, print_fn: Callable[[str], None] = print) -> list[str]:
    """Fail the runs a dead btc-anomaly process left active and free their pool slots; returns their ids.

    Without ``instance``, opens (and closes) the one DAGSTER_HOME points at.
    """
    if instance is None:
        with dg.DagsterInstance.get() as opened:
            return recover_dead_runs(opened, print_fn)
    recovered = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=_ACTIVE), limit=1000):
        run = record.dagster_run
        launcher = Launcher.parse(run.tags.get(LAUNCHER_TAG))
        if launcher is None or launcher.alive() is not False:
            continue
        held = _slots_held(instance, run.run_id)
        instance.report_run_failed(
            run, message=f"Marked failed by btc-anomaly: the process that executed this run (pid {launcher.pid} on "
                         f"{launcher.host}) is gone; its pool slots were freed.")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        slots = ", ".join(f"{n} {pool} pool slot{'s' if n > 1 else ''}" for pool, n in held.items()) or "no pool slots"
        print_fn(f"recovered: run {run.run_id[:8]} ({run.job_name}, {run.status.value}) was left by pid {launcher.pid}, "
                 f"which is gone: marked FAILED, freed {slots}")
        recovered.append(run.run_id)
    return recovered


def _holders(instance: dg.DagsterInstance, info) -> str:
    parts = []
    for slot in info.claimed_slots:
        run = instance.get_run_by_id(slot.run_id)
        launcher = Launcher.parse(run.tags.get(LAUNCHER_TAG)) if run else None
        who = f"pid {launcher.pid}" if launcher else "launched outside btc-anomaly"
        status = run.status.value if run else "unknown run"
        parts.append(f"run {slot.run_id[:8]} step {slot.step_key} ({status}, {who})")
    return "; ".join(parts) or "no run (slots being handed over)"


def pool_wait_lines(instance: dg.DagsterInstance, own_tag: str) -> Iterator[tuple[str, str]]:
    """(step id, message) for each step of a run tagged ``own_tag`` that waits for a pool slot."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        for step in info.pending_steps:
            if step.assigned_timestamp is not None:
                continue
            run = instance.get_run_by_id(step.run_id)
            if run is None or run.tags.get(LAUNCHER_TAG) != own_tag:
                continue
            message = (f"waiting: step {step.step_key} of run {step.run_id[:8]} waits for a slot in the {pool} pool "
                       f"(limit {info.slot_count}), held by {_holders(instance, info)}")
            yield f"{step.run_id}:{step.step_key}", message


@contextmanager
def report_pool_waits(print_fn: Callable[[str], None] | None = None):
    """While the block runs, print (every 30 s at most per step) which of this process's steps wait for a pool slot."""
    print_fn = print_fn or (lambda line: print(line, file=sys.stderr, flush=True))
    own_tag = launch_tags()[LAUNCHER_TAG]
    stop = threading.Event()

    def watch() -> None:
        last: dict[str, float] = {}
        with dg.DagsterInstance.get() as instance:
            while not stop.wait(WAIT_POLL_SECONDS):
                try:
                    for key, line in pool_wait_lines(instance, own_tag):
                        if time.monotonic() - last.get(key, -1e9) >= WAIT_REPORT_INTERVAL_SECONDS:
                            last[key] = time.monotonic()
                            print_fn(line)
                except Exception as err:  # noqa: BLE001 - never let the reporter break a run; say why it stopped
                    print_fn(f"note: pool-wait reporting stopped: {type(err).__name__}: {err}")
                    return

    thread = threading.Thread(target=watch, name="btc-pool-waits", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
