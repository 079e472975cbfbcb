"""Starting the Spark session early: which masters get a warm-up query, and that errors are not lost.

No JVM here: the session builder and the warm-up are stand-ins (the real warm-up query runs in
test_aggregates_spark.py, and test_aggregates_asset.py runs the asset with the early start on).
"""

from __future__ import annotations

import threading
import time

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


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the background thread did not finish in time"
        time.sleep(0.01)


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
    _wait_for(lambda: "warm_up_seconds" in warmer.timings)  # the step comes later than the warm-up here

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


def _session_user(seen: list):
    @dg.asset
    def uses_spark(pyspark: SparkResource) -> None:
        seen.append(pyspark.spark_session)
        seen.append(pyspark.spark_session)

    return uses_spark


def _fake_build(built: list):
    def build(self):
        built.append(threading.current_thread().name)
        return object()

    return build


def test_a_run_starts_the_session_early_and_its_step_gets_that_one_session(monkeypatch):
    built, seen = [], []
    monkeypatch.setattr(SparkResource, "_build_session", _fake_build(built))
    monkeypatch.setattr("btc_anomaly_assets.aggregates.resources.warm_up_aggregation", lambda session: None)
    result = dg.materialize([_session_user(seen)], resources={"pyspark": build_pyspark_resource("local[2]", None)})

    assert result.success
    assert built == ["spark-session-warmer"]  # built once, in the background thread
    assert seen[0] is seen[1]


def test_a_session_started_before_the_run_is_the_one_the_run_uses(monkeypatch):
    """The CLI starts the session before loading definitions; the run adopts it instead of a second one."""
    built, seen = [], []
    monkeypatch.setattr(SparkResource, "_build_session", _fake_build(built))
    monkeypatch.setattr("btc_anomaly_assets.aggregates.resources.warm_up_aggregation", lambda session: None)
    build_pyspark_resource("local[2]", None).start_in_background(_Log())
    build_pyspark_resource("local[2]", None).start_in_background(_Log())  # a second call starts nothing more
    _wait_for(lambda: built)

    with dg.instance_for_test() as instance:
        result = dg.materialize([_session_user(seen)], instance=instance,
                                resources={"pyspark": build_pyspark_resource("local[2]", None)})
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success and built == ["spark-session-warmer"] and seen[0] is seen[1]
    assert any("the one this process started before the run" in message for message in messages)

    # adopted once: the next run (another configuration, or the same one again) starts its own
    dg.materialize([_session_user(seen)], resources={"pyspark": build_pyspark_resource("local[2]", None)})
    assert built == ["spark-session-warmer", "spark-session-warmer"]


def test_a_prestarted_session_of_another_configuration_is_not_adopted(monkeypatch):
    built, seen = [], []
    monkeypatch.setattr(SparkResource, "_build_session", _fake_build(built))
    monkeypatch.setattr("btc_anomaly_assets.aggregates.resources.warm_up_aggregation", lambda session: None)
    build_pyspark_resource("local[1]", None).start_in_background(_Log())
    _wait_for(lambda: built)
    assert dg.materialize([_session_user(seen)], resources={"pyspark": build_pyspark_resource("local[2]", None)}).success
    assert len(built) == 2
    from btc_anomaly_assets.aggregates import spark_warmup

    assert spark_warmup.adopt(build_pyspark_resource("local[1]", None)._config_key()) is not None  # still waiting


def test_a_process_about_to_exit_lets_a_starting_session_finish_and_skips_the_warm_up():
    """The CLI after a run that failed before its Spark step: the JVM must not be stopped mid-start."""
    from btc_anomaly_assets.aggregates import spark_warmup

    release, built, warmed = threading.Event(), [], []

    def build():
        release.wait(5)
        built.append("session")
        return "session"

    warmer = SessionWarmer(build, warmed.append, _Log()).start()
    threading.Timer(0.3, release.set).start()
    began = time.monotonic()
    spark_warmup.settle_all(timeout=5)
    assert built == ["session"] and not warmer._thread.is_alive()
    assert warmed == [] and time.monotonic() - began >= 0.25  # waited for the build, skipped the warm-up


def test_start_early_off_builds_in_the_step(monkeypatch):
    built, seen = [], []
    monkeypatch.setattr(SparkResource, "_build_session", _fake_build(built))
    resource = SparkResource(spark_config=spark_config("local[2]", None), start_early=False)
    assert dg.materialize([_session_user(seen)], resources={"pyspark": resource}).success
    assert built == [threading.current_thread().name]


def test_no_jvm_outside_a_run_and_sensor_contexts_need_no_with_block(monkeypatch):
    built = []
    monkeypatch.setattr(SparkResource, "_build_session", _fake_build(built))
    resource = build_pyspark_resource("local[2]", None)
    context = dg.build_sensor_context(resources={"pyspark": resource})  # the CLI's alert tick does this
    assert context.resources.pyspark._warmer is None
    with dg.build_resources({"pyspark": resource}) as resources:
        assert resources.pyspark._warmer is None
    assert built == []


def test_a_step_that_needs_the_session_at_once_skips_the_warm_up():
    release, warmed = threading.Event(), []

    def build():
        release.wait(5)
        return "session"

    warmer = SessionWarmer(build, warmed.append, _Log()).start()
    threading.Timer(0.3, release.set).start()
    assert warmer.result() == "session"  # asked for while the session was still being built
    assert warmed == []


def test_classic_config_keeps_the_cluster_path_configurable():
    assert spark_config("spark://host:7077", None)["spark.master"] == "spark://host:7077"
    assert spark_config(None, "sc://host:15002") == {"spark.remote": "sc://host:15002"}
