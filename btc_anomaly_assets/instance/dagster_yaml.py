"""The Dagster instance btc-anomaly uses: the ``dagster.yaml`` it writes into a new DAGSTER_HOME."""

from __future__ import annotations

import os
from pathlib import Path

from btc_anomaly_assets.common import settings

DAGSTER_YAML_TEMPLATE = """\
# Written by btc-anomaly for this data dir. Edit freely; it is not overwritten once present.
telemetry:
  enabled: false
# Stock SQLite run and schedule storage; the event log is the stock SQLite one with batched writes
# (btc_anomaly_assets/instance_storage.py): a day's backfill records ~17,000 per-partition events.
run_storage:
  module: dagster._core.storage.runs
  class: SqliteRunStorage
  config:
    base_dir: {home}/history
event_log_storage:
  module: btc_anomaly_assets.instance.event_log
  class: BatchedSqliteEventLogStorage
  config:
    base_dir: {home}/history/runs
schedule_storage:
  module: dagster._core.storage.schedules
  class: SqliteScheduleStorage
  config:
    base_dir: {home}/schedules
concurrency:
  pools:
    default_limit: 1   # the duckdb pool: one DuckDB-writing step at a time across runs
  runs:
    max_concurrent_runs: 4
run_queue:
  dequeue_interval_seconds: 1   # default 5: each live minute's run and each alert run waited ~2.5 s more
# The UI's "Join the Dagster community" dialog would cover the first page a new user opens.
nux:
  enabled: false
"""


def dagster_yaml(home: Path) -> str:
    """The ``dagster.yaml`` btc-anomaly writes into a new DAGSTER_HOME (storage paths are absolute)."""
    return DAGSTER_YAML_TEMPLATE.format(home=Path(home).resolve())


def prepare_dagster_home() -> Path:
    """A persistent DAGSTER_HOME under the data dir, so runs and sensor cursors survive and the UI sees them."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.dagster_home()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(dagster_yaml(home))
    os.environ["DAGSTER_HOME"] = str(home)
    # Two processes creating a new SQLite instance at once break its migrations (dagster#27390):
    # create the storage once, under a lock, before any run starts.
    from filelock import FileLock

    with FileLock(str(home / ".create.lock"), timeout=120):
        import dagster as dg

        dg.DagsterInstance.get().dispose()
    return home
