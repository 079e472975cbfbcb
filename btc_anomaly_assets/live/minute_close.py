"""A live run starts before its minute closes; its raw step waits here for the minute to be whole.

Starting a run costs seconds that have nothing to do with the data: the run queue, a new process
importing Dagster, pandas and the code, the Spark client, Prophet on first use. The ``live_minute``
sensor therefore launches each minute's run ``PRELAUNCH_LEAD`` before the minute closes, and the
raw step waits for the close:

- push sources (``mempool-space``, ``bitcoin-core``): until the collector's state says it watched
  the feed up to the close (``alive_at >= end``; the collector flushes right after each minute
  boundary), so the minute's landing file is final; at most ``LANDED_TIMEOUT`` past the close,
  after which the step goes on and the minute is reported incomplete (``minute_problems``);
- polled sources (``blockchair``): until ``PULL_SETTLE`` after the close, then it polls.

A window that closed long ago (a backfill) does not wait at all. While there is time left before
the close, the step imports the libraries later steps would load on first use (``PRELOAD_MODULES``),
so that cost also leaves the minute's critical path.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from btc_anomaly_assets.common.utc import utc_now

# The live_minute sensor requests a minute's run this long before it closes (the sensor daemon
# evaluates it every few seconds, so at least two evaluations fall inside the lead).
PRELAUNCH_LEAD = timedelta(seconds=20)
LANDED_TIMEOUT = timedelta(seconds=10)
PULL_SETTLE = timedelta(seconds=1)
PRELOAD_MODULES = ("prophet",)  # the forecast step's first import, ~1 s in a new run process
PRELOAD_MIN_LEFT = timedelta(seconds=3)  # preload only when the close is at least this far away
POLL_SECONDS = 0.05


@dataclass
class CloseWait:
    """What waiting for the close did: seconds waited, whether the feed landed the minute in time
    (None for a polled source), and which modules were imported meanwhile."""

    waited_seconds: float = 0.0
    landed: bool | None = None
    preloaded: list[str] = field(default_factory=list)


def preload_modules(names=PRELOAD_MODULES, log=None) -> list[str]:
    """Import ``names`` now; a module that fails to import is logged and left to fail where it is used."""
    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as exc:  # noqa: BLE001 - the step that uses it raises the real error
            if log is not None:
                log.warning(f"preloading {name} failed ({type(exc).__name__}: {exc}); the step that needs it will say why")
    return loaded


def wait_for_close(end: datetime, landed: Callable[[], bool] | None, log, *, now: Callable[[], datetime] | None = None,
                   sleep: Callable[[float], None] = time.sleep, timeout: timedelta = LANDED_TIMEOUT,
                   settle: timedelta = PULL_SETTLE, preload: Callable[[], list[str]] | None = None) -> CloseWait:
    """Block until the window ending at ``end`` (naive UTC) can be read whole; see the module docstring.

    ``landed``: for a push source, whether the collector has watched the feed up to ``end``; None
    for a polled source. ``preload`` (default: ``preload_modules``) runs first when the close is
    more than ``PRELOAD_MIN_LEFT`` away.
    """
    now = now or utc_now
    started = now()
    result = CloseWait()
    if started < end - PRELOAD_MIN_LEFT:
        result.preloaded = (preload or (lambda: preload_modules(log=log)))()
    if landed is None:
        ready_at = end + settle
        while (left := (ready_at - now()).total_seconds()) > 0:
            sleep(min(left, 1.0))
    else:
        deadline = end + timeout
        while True:
            current = now()
            if current >= end and landed():
                result.landed = True
                break
            if current >= deadline:
                result.landed = False
                break
            sleep(POLL_SECONDS)
    result.waited_seconds = round((now() - started).total_seconds(), 3)
    if result.waited_seconds < POLL_SECONDS:  # the window had closed already (a backfill): nothing to say
        return result
    how = {True: "the collector landed it", False: "the collector had not landed it; the minute is reported incomplete",
           None: "polling now"}[result.landed]
    log.info(f"waited {result.waited_seconds:.2f} s for {end:%Y-%m-%d %H:%M} to close ({how})"
             + (f"; imported {', '.join(result.preloaded)} meanwhile" if result.preloaded else ""))
    if result.landed is False:
        log.warning(f"the collector had not landed the minute ending {end:%H:%M} {timeout.total_seconds():.0f} s after it "
                    "closed: is `btc-anomaly collect` running and keeping up?")
    return result
