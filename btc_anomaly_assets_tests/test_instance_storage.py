"""The batched SQLite event log stores exactly what the stock one stores, in far fewer transactions.

It is the one module on Dagster's private API, so it is pinned: the first test fails on any Dagster
version other than the one these equivalence tests last passed on.

The same single-run range materializations (a success and a failure, with checks) run on two
instances: the stock ``dagster.yaml`` and the one ``btc-anomaly`` writes. Everything Dagster reads
back - materializations per partition, planned events, failed partitions, the asset record, the
check history and the run's log - must be identical.
"""

import os
from datetime import datetime
from pathlib import Path

import dagster
import dagster as dg
import pytest

from btc_anomaly_assets.instance.dagster_yaml import PG_URL_ENV, batched_sqlite_available, dagster_yaml
from btc_anomaly_assets.instance.event_log import (
    TESTED_DAGSTER_VERSION,
    BatchedPostgresEventLogStorage,
    BatchedSqliteEventLogStorage,
)

MINUTES = dg.TimeWindowPartitionsDefinition(cron_schedule="* * * * *", fmt="%Y-%m-%d-%H:%M",
                                            start=datetime(2025, 8, 13), end=datetime(2025, 8, 13, 2))
RANGE = {"dagster/asset_partition_range_start": "2025-08-13-00:00", "dagster/asset_partition_range_end": "2025-08-13-00:59"}
SECOND_RANGE = {"dagster/asset_partition_range_start": "2025-08-13-00:30", "dagster/asset_partition_range_end": "2025-08-13-01:29"}
KEY = dg.AssetKey(["btc", "counted"])


@dg.asset(key=KEY, partitions_def=MINUTES, backfill_policy=dg.BackfillPolicy.single_run(),
          check_specs=[dg.AssetCheckSpec("rows_positive", asset=KEY, blocking=True)])
def counted(context: dg.AssetExecutionContext):
    window = context.partition_time_window
    minutes = int((window.end - window.start).total_seconds() // 60)
    return dg.MaterializeResult(metadata={"minutes": minutes},
                                check_results=[dg.AssetCheckResult(check_name="rows_positive", passed=minutes > 0)])


@dg.asset(key=dg.AssetKey(["btc", "failing"]), partitions_def=MINUTES, backfill_policy=dg.BackfillPolicy.single_run())
def failing() -> None:
    raise RuntimeError("bad input in this window")


def _instance(home: Path, batched: bool, pg_url: str | None = None) -> dg.DagsterInstance:
    """A SQLite instance, or with ``pg_url`` a PostgreSQL one (stock: dagster-postgres' own event log)."""
    home.mkdir()
    if pg_url is None:
        (home / "dagster.yaml").write_text(dagster_yaml(home, postgres=False, sqlite_store="batched" if batched else "stock"))
        return dg.DagsterInstance.from_config(str(home))
    text = dagster_yaml(home, postgres=True)
    assert "class: BatchedPostgresEventLogStorage" in text
    if not batched:
        text = text.replace("module: btc_anomaly_assets.instance.event_log\n  class: BatchedPostgresEventLogStorage",
                            "module: dagster_postgres\n  class: PostgresEventLogStorage")
    (home / "dagster.yaml").write_text(text)
    os.environ[PG_URL_ENV] = pg_url  # read when the instance is created
    return dg.DagsterInstance.from_config(str(home))


def _run_everything(instance: dg.DagsterInstance) -> list[str]:
    runs = [dg.materialize([counted], instance=instance, tags=RANGE).run_id,
            dg.materialize([counted], instance=instance, tags=SECOND_RANGE).run_id]
    failed = dg.materialize([failing], instance=instance, tags=RANGE, raise_on_error=False)
    assert not failed.success
    return runs + [failed.run_id]


def _readback(instance: dg.DagsterInstance, run_ids: list[str]) -> dict:
    """What Dagster reads back, with run ids replaced by their position (they differ per instance)."""
    position = {run_id: i for i, run_id in enumerate(run_ids)}
    materializations = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=KEY), limit=1000, ascending=True)
    planned = instance.get_event_records(dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
                                                               asset_key=KEY), limit=1000, ascending=True)
    failing_status = instance.get_status_by_partition(dg.AssetKey(["btc", "failing"]), MINUTES.get_partition_keys(), MINUTES)
    [record] = instance.get_asset_records([KEY])
    # the failing asset's row exists only through its planned events (they set its last run)
    failing_records = instance.get_asset_records([dg.AssetKey(["btc", "failing"])])
    checks = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(KEY, "rows_positive"), limit=1000)
    return {
        "materialized": [(position[r.run_id], r.partition_key,
                          r.event_log_entry.asset_materialization.metadata["minutes"].value) for r in materializations.records],
        "materialized_partitions": sorted(instance.get_materialized_partitions(KEY)),
        "planned": [(position[r.run_id], r.partition_key) for r in planned],
        # what the UI's partition health bar shows for the failed run
        "failed_partitions": sorted(k for k, status in failing_status.items() if status == dg.AssetPartitionStatus.FAILED),
        "last_materialization": (record.asset_entry.last_materialization_record.partition_key,
                                 position[record.asset_entry.last_run_id]),
        "failing_asset_last_run": [position.get(r.asset_entry.last_run_id) for r in failing_records],
        "checks": sorted((position[c.run_id], c.partition or "", c.status.value) for c in checks),
        # each check row carries the planned (or evaluation) event itself
        "check_events": sorted((position[c.run_id], c.partition or "", c.event.dagster_event_type.value,
                                c.event.dagster_event.event_specific_data.check_name) for c in checks),
        "log_kinds": [[e.dagster_event_type.value if e.dagster_event else "log" for e in instance.all_logs(run_id)]
                      for run_id in run_ids],
    }


def test_the_batched_store_was_checked_against_the_installed_dagster():
    assert dagster.__version__ == TESTED_DAGSTER_VERSION, (
        f"Dagster is now {dagster.__version__}; btc_anomaly_assets/instance/event_log.py subclasses its private "
        f"SQLite event log and was checked on {TESTED_DAGSTER_VERSION}. Until this is settled, new dagster.yaml files "
        "get the stock SQLite storage. Run this file; if the equivalence tests pass, bump TESTED_DAGSTER_VERSION, "
        "else fix or drop the module (see docs-notes/issue17.md for what it buys)")
    assert batched_sqlite_available()


def test_batched_storage_reads_back_exactly_like_the_stock_storage(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "5000")  # what the batched storage turns on in its process
    batches: list[int] = []
    store = BatchedSqliteEventLogStorage._store_asset_events
    monkeypatch.setattr(BatchedSqliteEventLogStorage, "_store_asset_events",
                        lambda self, events: (batches.append(len(events)), store(self, events))[1])

    with _instance(tmp_path / "stock", batched=False) as stock, _instance(tmp_path / "batched", batched=True) as batched:
        assert type(batched.event_log_storage) is BatchedSqliteEventLogStorage
        expected = _readback(stock, _run_everything(stock))
        actual = _readback(batched, _run_everything(batched))

    assert expected["materialized_partitions"] == [f"2025-08-13-{h:02d}:{m:02d}" for h in (0, 1) for m in range(60)][:90]
    assert len(expected["planned"]) == 120 and len(expected["failed_partitions"]) == 60
    # one PLANNED row per partition of each of the two check runs, plus their two range evaluations
    assert sum(status == "PLANNED" for _, _, status in expected["checks"]) == 120 and len(expected["checks"]) == 122
    for key in expected:
        assert actual[key] == expected[key], key
    # the 60-partition runs went to storage as whole batches, not event by event
    assert batches.count(60) >= 4


def test_batched_postgres_storage_reads_back_exactly_like_dagster_postgres(tmp_path, monkeypatch, postgres_server):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "5000")
    monkeypatch.setenv(PG_URL_ENV, "unset")  # restored after the test; each instance sets its own database
    batches: list[int] = []
    store = BatchedPostgresEventLogStorage._store_run
    monkeypatch.setattr(BatchedPostgresEventLogStorage, "_store_run",
                        lambda self, events: (batches.append((events[0].dagster_event_type.value, len(events))),
                                              store(self, events))[1])

    with _instance(tmp_path / "stock", False, postgres_server.new_database("stock")) as stock:
        assert type(stock.event_log_storage).__name__ == "PostgresEventLogStorage"
        expected = _readback(stock, _run_everything(stock))
    with _instance(tmp_path / "batched", True, postgres_server.new_database("batched")) as batched:
        assert type(batched.event_log_storage) is BatchedPostgresEventLogStorage
        actual = _readback(batched, _run_everything(batched))

    assert len(expected["planned"]) == 120 and len(expected["failed_partitions"]) == 60
    assert sum(status == "PLANNED" for _, _, status in expected["checks"]) == 120
    assert expected["failing_asset_last_run"] == [2]
    for key in expected:
        assert actual[key] == expected[key], key
    # each run's 60 planned events went to the database as one batch
    assert batches.count(("ASSET_MATERIALIZATION_PLANNED", 60)) >= 3


def test_batching_is_switched_on_by_the_storage_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    with _instance(tmp_path / "home", batched=True):
        import os

        assert int(os.environ["DAGSTER_EVENT_BATCH_SIZE"]) > 0


@pytest.mark.parametrize("batched", [False, True])
def test_each_instance_is_usable_by_a_second_process_view(tmp_path, batched):
    """A second instance object on the same home (the webserver, the daemon) reads what a run wrote."""
    with _instance(tmp_path / "home", batched=batched) as writer:
        _run_everything(writer)
        with dg.DagsterInstance.from_config(str(tmp_path / "home")) as reader:
            assert len(reader.get_materialized_partitions(KEY)) == 90
