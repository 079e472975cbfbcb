"""Shared fixtures: the Spark sessions and the one Spark Connect server the suite starts itself.

The session also refuses to read anything from a `shared/` data or docs folder beside the checkout:
a user's clone has none, so a test that needs such a file must fail here too, not only in their
clone. Every file the suite reads lives in the repository (`btc_anomaly_testing/fixtures/`).
"""

import os
import sys

# The workers hold Spark Connect clients (gRPC) and also launch classic Spark drivers, whose JVMs
# pyspark starts with fork + exec (a preexec_fn forces fork). gRPC's fork handlers are on in its core
# and off in its Python layer by default, a mixed state gRPC itself calls broken (grpc/grpc#41455); a
# forked child then dies before exec now and then ("Java gateway process exited before sending its
# port number", beside "epoll_wait error: Bad file descriptor"). Nothing here forks without exec, so
# the handlers are turned off, before anything imports grpc; subprocesses inherit it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

pytest_plugins = ["btc_anomaly_assets_tests.conftest_spark", "btc_anomaly_assets_tests.conftest_postgres"]

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUTSIDE_SHARED = os.path.join(os.path.dirname(_REPO), "shared") + os.sep


def _refuse_shared_reads(event: str, args: tuple) -> None:
    if event != "open" or not args:
        return
    path = args[0]
    if isinstance(path, int):
        return
    try:
        absolute = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return
    if absolute.startswith(_OUTSIDE_SHARED):
        raise PermissionError(
            f"the test suite read {absolute}, outside the repository: copy what it needs into "
            "btc_anomaly_testing/fixtures/ (a user's clone has no ../shared)"
        )


sys.addaudithook(_refuse_shared_reads)


# The files that take minutes (real CLI runs, dagster dev, a live collector, PostgreSQL) start first,
# so the workers (pytest-xdist, one file each) finish together instead of waiting on one of them at
# the end. The order is deterministic, as xdist requires.
SLOW_FILES = (
    "test_pipeline_e2e.py", "test_live_collect_e2e.py", "test_dagster_ui_demo_browser.py", "test_instance_postgres.py",
    "test_concurrency.py", "test_faults.py", "test_instance_recovery.py", "test_detection_clusters.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))
