"""Starting the Spark session early: which masters get a warm-up query, and that errors are not lost.

No JVM here: the session builder and the warm-up are stand-ins (the real warm-up query runs in
test_aggregates_spark.py, and test_aggregates_asset.py runs the asset with the early start on).
"""

from __future__ import annotations

import threading

import dagster as dg
import pytest

from btc_anomaly_assets.aggregates.resources import SparkResource, build_pyspark_resource, spark_config
from btc_anomaly_assets.aggregates.spark_warmup import SessionWarmer, is_local_master


class _Log:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, text):
        self.lines.append(("info", text))

    def warning(self, text):
        self.lines.append(("warning", text))


@pytest.mark.parametrize("master, local", [
    ("local", True), ("local[2]", True), ("local[*]", True), (" local[4] ", True),
    ("spark://host:7077", False), ("yarn", False), ("k8s://https://api:443", False), ("localhost", False), (None, False),
])
def test_only_local_masters_get_the_warm_up_query(master, local):
    assert is_local_master(master) is local


def test_the_session_comes_from_the_thread_and_the_warm_up_ran_on_it():
    seen = []
    log = _Log()
    warmer = SessionWarmer(lambda: "session", seen.append, log).start()

    assert warmer.result() == "session"
    assert seen == ["session"]
    assert log.lines[-1][0] == "info" and "session_seconds" in log.lines[-1][1] and "warm_up_seconds" in log.lines[-1][1]


def test_a_session_that_cannot_be_built_raises_its_own_error_where_it_is_needed():
    class Unreachable(RuntimeError):
        pass

    def build():
        raise Unreachable("sc://127.0.0.1:1 is not reachable")

    warmer = SessionWarmer(build, lambda s: None, _Log()).start()
    with pytest.raises(Unreachable, match="not reachable"):
        warmer.result()


def test_a_failed_warm_up_is_logged_and_the_session_still_used():
    log = _Log()

    def warm_up(session):
        raise ValueError("warm-up broke")

    warmer = SessionWarmer(lambda: "session", warm_up, log).start()
    assert warmer.result() == "session"
    assert any(level == "warning" and "warm-up broke" in text for level, text in log.lines)


def test_the_step_waits_for_a_session_still_starting():
    release = threading.Event()

    def build():
        release.wait(5)
        return "late session"

    warmer = SessionWarmer(build, None, _Log()).start()
    threading.Timer(0.2, release.set).start()
    assert warmer.result() == "late session"
    assert warmer.timings["waited_seconds"] > 0.1


def test_the_resource_starts_early_in_a_run_and_hands_the_same_session_to_the_step(monkeypatch):
    built = []

    def fake_build(self):
        built.append(threading.current_thread().name)
        return object()

    monkeypatch.setattr(SparkResource, "_build_session", fake_build)
    resource = build_pyspark_resource("local[2]", None)
    monkeypatch.setattr("btc_anomaly_assets.aggregates.resources.warm_up_aggregation", lambda session: None)
    with dg.build_resources({"pyspark": resource}) as resources:
        first = resources.pyspark.spark_session
        assert resources.pyspark.spark_session is first
    assert built == ["spark-session-warmer"]  # built once, in the background thread


def test_start_early_off_builds_in_the_step(monkeypatch):
    built = []
    monkeypatch.setattr(SparkResource, "_build_session", lambda self: built.append(threading.current_thread().name) or object())
    resource = SparkResource(spark_config=spark_config("local[2]", None), start_early=False)
    with dg.build_resources({"pyspark": resource}) as resources:
        assert resources.pyspark.spark_session is not None
    assert built == [threading.current_thread().name]


def test_classic_config_keeps_the_cluster_path_configurable():
    assert spark_config("spark://host:7077", None)["spark.master"] == "spark://host:7077"
    assert spark_config(None, "sc://host:15002") == {"spark.remote": "sc://host:15002"}
