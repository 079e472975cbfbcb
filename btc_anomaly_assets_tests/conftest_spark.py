"""Shared Spark fixtures (a pytest plugin: load with ``pytest_plugins = ["btc_anomaly_assets_tests.conftest_spark"]``).

- ``spark_test_conf``: small-machine session config (2 cores, no UI, few shuffle partitions).
- ``classic_spark``: one classic local session per test module (stopped at module end so a
  JVM-heavy session does not outlive the module that needed it).
- ``connect_server_launch``: ONE local Spark Connect server per test session, from the
  installed pyspark, on a free loopback port, launched without waiting (request it early, e.g.
  ``pytestmark = pytest.mark.usefixtures("connect_server_launch")``, so it boots while the
  classic session starts); stopped at session end.
- ``connect_server``: that server, once it answers queries.
- ``connect_spark``: a Connect client session to that server.
- ``real_lake``: the real 13-14 Aug Blockchair rows written to a hive-style raw lake in a temp
  folder with the project's lake writer; yields the raw dataset path Spark reads.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from btc_anomaly_assets.aggregates.resources import CLASSIC_CONF
from btc_anomaly_assets.aggregates.spark_session import SparkSettings, build_spark_session, start_local_connect_server
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


@pytest.fixture(scope="session")
def connect_server_launch():
    server = start_local_connect_server(
        master="local[2]",
        driver_memory="1g",
        conf={k: v for k, v in SPARK_TEST_CONF.items() if k != "spark.driver.memory"},
        wait=False,
    )
    yield server
    server.stop()


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
