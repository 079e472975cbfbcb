"""The classic Spark driver's lifetime in this process: who it was started for, and ending it.

pyspark runs one driver JVM per Python process (classic sessions) and keeps it until Python
exits, ~0.5 GB after a day's aggregation. A run that started it for its aggregation step ends it
when the step is done (``SparkResource.release``); a driver another caller was handed too (a
notebook's, a test's, through get-or-create) is left running.
"""

from __future__ import annotations

import subprocess
import weakref
from typing import Any

# Classic SparkContexts ``build_spark_session`` started and nobody has asked it for since: the
# ones their one user may end (``end_classic_driver``) without pulling a session from under another.
_started_for_one_user: weakref.WeakSet = weakref.WeakSet()


def note_user(session: Any, *, started: bool) -> None:
    """Record a classic session handed out by ``build_spark_session``: newly started, or shared."""
    if started:
        _started_for_one_user.add(session.sparkContext)
    else:  # get-or-create handed out a running driver: it now has more than one user
        _started_for_one_user.discard(session.sparkContext)


def started_for_one_user(session: Any) -> bool:
    """Whether ``session``'s driver was started by one ``build_spark_session`` call and reused by no other."""
    if _is_connect(session):  # a client of a server: no driver in this process
        return False
    return session.sparkContext in _started_for_one_user


def _is_connect(session: Any) -> bool:
    return type(session).__module__.startswith("pyspark.sql.connect")


DRIVER_EXIT_TIMEOUT_SECONDS = 20.0


def end_classic_driver(session: Any, timeout: float = DRIVER_EXIT_TIMEOUT_SECONDS) -> bool:
    """Stop a classic session and end its driver JVM; the next session in this process starts a new one.

    ``SparkSession.stop()`` stops the SparkContext (on a cluster: releases its executors) but keeps
    the local driver JVM and its ~0.5 GB for as long as Python lives: pyspark starts one JVM per
    process (``SparkContext._gateway``) and has no public call to end it. The JVM exits when the
    pipe pyspark opened to its stdin closes, so this closes the gateway and that pipe, waits for
    the process, and forgets the gateway so a later session launches a fresh one. Returns whether
    the JVM ended (False: the session is stopped, but the JVM is not this call's to end). Raises
    ``RuntimeError`` if the JVM is still running after ``timeout`` seconds.
    """
    from pyspark import SparkContext

    session.stop()
    with SparkContext._lock:
        gateway = SparkContext._gateway
        if gateway is None or SparkContext._active_spark_context is not None:
            return False  # no JVM of ours, or another session was created meanwhile: leave it running
        SparkContext._gateway = None
        SparkContext._jvm = None
    gateway.shutdown()
    process = getattr(gateway, "proc", None)
    if process is None:  # a gateway pyspark did not launch (PYSPARK_GATEWAY_PORT): not ours to end
        return False
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the Spark driver JVM (pid {process.pid}) did not exit {timeout:.0f} s after its "
                           "session stopped") from None
    return True
