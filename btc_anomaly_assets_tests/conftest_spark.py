"""Shared Spark fixtures (a pytest plugin: load with ``pytest_plugins = ["btc_anomaly_assets_tests.conftest_spark"]``).

- ``spark_test_conf``: small-machine session config (2 cores, no UI, few shuffle partitions).
- ``classic_spark``: one classic local session per test module (stopped at module end so a
  JVM-heavy session does not outlive the module that needed it).
- ``connect_server_launch``: ONE local Spark Connect server per pytest run, from the
  installed pyspark, on a free loopback port, launched without waiting (request it early, e.g.
  ``pytestmark = pytest.mark.usefixtures("connect_server_launch")``, so it boots while the
  classic session starts). Under pytest-xdist the first worker that asks starts it and the
  others attach to it (one JVM for the run, not one per worker); the controller stops it when
  the run ends. Without xdist the session starts and stops its own.
- ``connect_server``: that server, once it answers queries.
- ``connect_spark``: a Connect client session to that server.
- ``real_lake``: the real 13-14 Aug Blockchair rows written to a hive-style raw lake in a temp
  folder with the project's lake writer; yields the raw dataset path Spark reads.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from btc_anomaly_assets.aggregates.resources import CLASSIC_CONF
from btc_anomaly_assets.aggregates.spark_session import (
    ConnectServerError,
    SparkSettings,
    build_spark_session,
    port_accepts,
    process_group_alive,
    signal_process_group,
    start_local_connect_server,
)
from btc_anomaly_assets.common.lake import raw_path, write_raw_window
from btc_anomaly_testing.real_data import real_raw

# 2 shared cores: 2 local threads and a handful of shuffle partitions (the default 200 costs
# ~1 s of task scheduling per small job).
SPARK_TEST_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.driver.memory": "1g",
    # The project's own driver JVM options (C1 only, serial collector): the JIT and GC threads then do
    # not compete with the other test files for the 2 cores.
    "spark.driver.extraJavaOptions": CLASSIC_CONF["spark.driver.extraJavaOptions"],
}


@pytest.fixture(scope="session")
def spark_test_conf() -> dict[str, str]:
    return dict(SPARK_TEST_CONF)


@pytest.fixture(scope="module")
def classic_spark(spark_test_conf):
    session = build_spark_session(SparkSettings(master="local[2]", app_name="btc-tests", extra_conf=spark_test_conf))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


SHARED_DIR_KEY = "btc_tests_shared_dir"  # the xdist controller's folder for what its workers share
CONNECT_RECORD = "spark-connect.json"


def _start_test_connect_server():
    return start_local_connect_server(
        master="local[2]",
        driver_memory="2g",  # the one server of the run: every worker's queries share its heap
        conf={k: v for k, v in SPARK_TEST_CONF.items() if k != "spark.driver.memory"},
        wait=False,
    )


class SharedConnectServer:
    """The run's Connect server as a worker sees it when another worker of the run started it."""

    def __init__(self, port: int, pgid: int, log_path: str):
        self.port, self.pgid, self.log_path = port, pgid, log_path

    @property
    def remote(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 180.0) -> "SharedConnectServer":
        deadline = time.monotonic() + timeout
        while not port_accepts("127.0.0.1", self.port):
            if not process_group_alive(self.pgid) or time.monotonic() > deadline:
                raise ConnectServerError(f"the run's shared Spark Connect server ({self.remote}) is not serving; "
                                         f"log {self.log_path}")
            time.sleep(0.2)
        return self


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist controller: one folder per run, handed to every worker, for the services they share."""
    config = node.config
    if not hasattr(config, "_btc_shared_dir"):
        config._btc_shared_dir = tempfile.mkdtemp(prefix="btc-tests-shared-")
    node.workerinput[SHARED_DIR_KEY] = config._btc_shared_dir


def pytest_unconfigure(config):
    """xdist controller, at the end of the run: stop the Connect server a worker started."""
    shared = getattr(config, "_btc_shared_dir", None)
    if shared is None:
        return
    record = Path(shared) / CONNECT_RECORD
    if record.exists():
        server = json.loads(record.read_text())
        signal_process_group(server["pgid"], signal.SIGTERM)
        deadline = time.monotonic() + 20
        while process_group_alive(server["pgid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        signal_process_group(server["pgid"], signal.SIGKILL)  # if it ignored SIGTERM (a no-op once it is gone)
        shutil.rmtree(server["work_dir"], ignore_errors=True)
    shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture(scope="session")
def connect_server_launch(request):
    shared = getattr(request.config, "workerinput", {}).get(SHARED_DIR_KEY)
    if shared is None:  # not under xdist: this session's own server
        server = _start_test_connect_server()
        yield server
        server.stop()
        return
    with open(Path(shared) / "spark-connect.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter; the others wait here, then attach
        record = Path(shared) / CONNECT_RECORD
        if record.exists():
            server = SharedConnectServer(**{k: v for k, v in json.loads(record.read_text()).items() if k != "work_dir"})
        else:
            server = _start_test_connect_server()
            record.write_text(json.dumps({"port": server.port, "pgid": server.process.pid,
                                          "log_path": str(server.log_path), "work_dir": str(server.work_dir)}))
    yield server  # the controller stops it when the whole run ends (pytest_unconfigure)


@pytest.fixture(scope="session")
def connect_server(connect_server_launch):
    return connect_server_launch.wait_ready()


@pytest.fixture(scope="session")
def connect_spark(connect_server):
    session = build_spark_session(SparkSettings(remote=connect_server.remote, app_name="btc-tests"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def real_lake(tmp_path_factory) -> str:
    """Raw dataset path of a lake holding all 82,640 real rows, one write per UTC day as ingest does."""
    raw = real_raw()
    dataset = raw_path(str(tmp_path_factory.mktemp("lake")))
    for day in sorted(raw["minute"].dt.normalize().unique()):
        start = datetime.fromisoformat(str(day))
        end = start + timedelta(days=1)
        write_raw_window(dataset, raw[(raw["minute"] >= start) & (raw["minute"] < end)], start, end)
    return dataset
