"""Spark through dagster-pyspark's ``LazyPySparkResource``: local by default, a cluster by configuration.

``SPARK_REMOTE=sc://host:15002`` gives a Spark Connect session (the live path: no JVM start per
run); ``SPARK_MASTER=spark://host:7077`` (or ``yarn``, ``k8s://…``) a classic session on a
cluster; neither gives ``local[*]``. The session time zone is always UTC. The session is only
created when an asset first touches it, so loading definitions never starts a JVM.
"""

from __future__ import annotations

import time

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pydantic import Field, PrivateAttr

from btc_anomaly_assets.aggregates.spark_driver import end_classic_driver, started_for_one_user
from btc_anomaly_assets.aggregates.spark_session import DEFAULT_MASTER, SparkSettings, build_spark_session
from btc_anomaly_assets.aggregates.spark_warmup import SessionWarmer, adopt, is_local_master, prestart, warm_up_aggregation

CLASSIC_CONF = {
    "spark.sql.shuffle.partitions": "8",  # the default 200 tasks cost more than the work on 2 cores
    "spark.ui.showConsoleProgress": "false",
    # Serial GC: no G1 regions/remembered sets for a small, short-lived driver heap (0.70 -> 0.63 GB resident in the day benchmark).
    # C1 only (TieredStopAtLevel=1): the driver's JIT compiles far less for a short run (session start and first
    # job: about half the JVM CPU); on a cluster the executors, which do the heavy work, keep their own options.
    # -Xms128m: the heap starts at 128 MB, not 1/64 of the machine's memory (384 MB on 24 GB), and grows only as the
    # aggregation needs (driver 0.44 -> 0.37 GB while the raw step runs beside the warm-up; same step times).
    "spark.driver.extraJavaOptions": "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xms128m",
    "spark.log.level": "ERROR",  # Spark's WARN lines (window without partition on a tiny grid, plan truncation) are noise here
}


class SparkResource(LazyPySparkResource):
    """``LazyPySparkResource`` whose session is built for classic *or* Connect from ``spark_config``.

    dagster-pyspark builds every session with ``SparkSession.builder``; a Connect session needs
    the Connect builder (so it can live beside a classic one in a process) and an endpoint check
    first: an unreachable ``sc://`` endpoint then fails in seconds with a clear error instead of
    the client's 100+ s of retries.

    With ``start_early`` (the default), a run that needs this resource starts the session in a
    background thread as soon as the run begins (while the raw step fetches and writes), and on a
    local master also runs the aggregation once on a two-row temporary lake (``spark_warmup``), so
    the step finds a started, warm JVM; a step that needs the session before the warm-up began
    skips it. Loading definitions, sensor ticks and resource contexts outside a run never start a JVM.
    """

    start_early: bool = Field(default=True, description="Start (and on local masters warm up) the session when the run begins")
    stop_when_done: bool = Field(default=True, description=(
        "Stop the classic session this run started (and end its driver JVM) once the aggregation step is done"))
    _warmer = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Only in a run (a sensor or a test building resources has no run, and no use for a JVM).
        # No teardown on purpose: it would make this a context-manager resource, which sensor
        # contexts built outside a ``with`` refuse; the thread is a daemon and the JVM ends with us.
        if self.start_early and context.dagster_run is not None and self._spark_session is None and self._warmer is None:
            warmer = adopt(self._config_key())
            if warmer is not None:
                warmer.use_log(context.log)
                context.log.info("Spark session: using the one this process started before the run")
            self._warmer = warmer or self._new_warmer(context.log).start()

    def start_in_background(self, log) -> None:
        """Start this configuration's session (and warm-up) now, for the next run in this process to adopt.

        The CLI's in-process run calls it before loading the definitions, so the JVM starts while
        Python imports, loads them and creates the run (about 5 s on the other core)."""
        if self.start_early:
            prestart(self._config_key(), lambda: self._new_warmer(log))

    def _config_key(self) -> tuple:
        return tuple(sorted(self.spark_config.items()))

    def _new_warmer(self, log) -> SessionWarmer:
        master = self.spark_config.get("spark.master")
        warm_up = warm_up_aggregation if not self.spark_config.get("spark.remote") and is_local_master(master) else None
        return SessionWarmer(self._build_session, warm_up, log)

    def _init_session(self) -> None:
        if self._spark_session is None:
            if self._warmer is not None:
                warmer, self._warmer = self._warmer, None
                self._spark_session = warmer.result()
            else:
                self._spark_session = self._build_session()

    def _build_session(self):
        conf = dict(self.spark_config)
        remote, master = conf.pop("spark.remote", None), conf.pop("spark.master", None)
        app_name = conf.pop("spark.app.name", "btc-anomaly-assets")
        return build_spark_session(SparkSettings(master=master, remote=remote, app_name=app_name, extra_conf=conf))

    def release(self, log) -> str:
        """After the run's last Spark work: stop the classic session this resource started, and its JVM.

        A day's driver JVM holds ~0.5 GB resident after the aggregation, and a run's later steps
        (and the whole run worker) would carry it to the end. Left running: a Connect session (a
        thin client), a session the process already had when this resource asked for one or that
        another caller has been handed since (get-or-create: a notebook's, a test's), and any
        session when ``stop_when_done`` is off. Returns what was done, for the step's metadata;
        a later use in this process starts a new session.
        """
        session = self._spark_session
        if session is None:
            return "no session"
        if self.spark_config.get("spark.remote"):
            return "kept (Spark Connect client)"
        if not self.stop_when_done:
            return "kept (stop_when_done is off)"
        if not started_for_one_user(session):
            return "kept (another user in this process shares the session)"
        began = time.monotonic()
        self._spark_session = None
        try:
            ended = end_classic_driver(session)
        except RuntimeError as exc:  # the aggregates are computed and correct: say so, and what still holds memory
            log.warning(f"Spark session stopped, but its driver JVM did not end: {exc}")
            return f"stopped; driver JVM still running ({exc})"
        seconds = time.monotonic() - began
        if not ended:
            log.info(f"Spark session stopped in {seconds:.1f} s; its driver JVM is left running (another session uses it)")
            return f"stopped after the step ({seconds:.1f} s); driver JVM left running"
        log.info(f"Spark session stopped and its driver JVM ended in {seconds:.1f} s (the run needs no more Spark)")
        return f"stopped after the step ({seconds:.1f} s)"

    @property
    def engine(self) -> str:
        return self.spark_config.get("spark.remote") or self.spark_config.get("spark.master") or DEFAULT_MASTER


# A day (~450k rows) aggregates well inside 512 MB of heap (Spark's minimum is ~450 MB); the driver
# JVM peaks near 0.6 GB resident and is ended after the step (``release``). SPARK_DRIVER_MEMORY raises it.
DEFAULT_DRIVER_MEMORY = "512m"


def spark_config(master: str | None, remote: str | None, driver_memory: str | None = None) -> dict[str, str]:
    if remote:
        return {"spark.remote": remote}
    return {"spark.master": master or DEFAULT_MASTER, "spark.app.name": "btc-anomaly-assets", **CLASSIC_CONF,
            "spark.driver.memory": driver_memory or DEFAULT_DRIVER_MEMORY}


def build_pyspark_resource(master: str | None, remote: str | None, driver_memory: str | None = None) -> SparkResource:
    return SparkResource(spark_config=spark_config(master, remote, driver_memory))


def configured_pyspark_resource() -> SparkResource:
    """The resource the definitions use, from SPARK_MASTER / SPARK_REMOTE / SPARK_DRIVER_MEMORY
    (a dict-valued Spark config cannot hold EnvVars; SPARK_* are not secrets, so they are read here)."""
    from btc_anomaly_assets.common import settings

    return build_pyspark_resource(settings.env_value("SPARK_MASTER"), settings.env_value("SPARK_REMOTE"),
                                  settings.env_value("SPARK_DRIVER_MEMORY"))
