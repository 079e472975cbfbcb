"""Spark through dagster-pyspark's ``LazyPySparkResource``: local by default, a cluster by configuration.

``SPARK_REMOTE=sc://host:15002`` gives a Spark Connect session (the live path: no JVM start per
run); ``SPARK_MASTER=spark://host:7077`` (or ``yarn``, ``k8s://…``) a classic session on a
cluster; neither gives ``local[*]``. The session time zone is always UTC. The session is only
created when an asset first touches it, so loading definitions never starts a JVM.
"""

from __future__ import annotations

from dagster_pyspark import LazyPySparkResource

from btc_anomaly_assets.lib.spark_session import (
    DEFAULT_MASTER,
    FIXED_CONF,
    SparkEndpointError,
    check_endpoint_reachable,
    parse_connect_endpoint,
)

CLASSIC_CONF = {
    "spark.sql.shuffle.partitions": "8",  # the default 200 tasks cost more than the work on 2 cores
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "2g",
    "spark.log.level": "ERROR",  # Spark's WARN lines (window without partition on a tiny grid, plan truncation) are noise here
}


def spark_config(master: str | None, remote: str | None) -> dict[str, str]:
    if remote:
        return {"spark.remote": remote, **FIXED_CONF}
    return {"spark.master": master or DEFAULT_MASTER, "spark.app.name": "btc-anomaly-assets", **CLASSIC_CONF, **FIXED_CONF}


def build_pyspark_resource(master: str | None, remote: str | None) -> LazyPySparkResource:
    return LazyPySparkResource(spark_config=spark_config(master, remote))


def check_spark_endpoint(config: dict) -> None:
    """Fail in seconds with a clear error when a Spark Connect endpoint does not answer.

    The Connect client would otherwise retry for more than 100 s before giving up.
    """
    remote = config.get("spark.remote")
    if remote:
        host, port = parse_connect_endpoint(remote)
        check_endpoint_reachable(host, port)


__all__ = ["SparkEndpointError", "build_pyspark_resource", "check_spark_endpoint", "spark_config"]
