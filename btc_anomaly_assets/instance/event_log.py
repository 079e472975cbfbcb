"""The ONE module that uses Dagster's private API: event logs that write Dagster's per-partition events in batches.

Everything else in the project uses Dagster's public API (a grep test enforces it). This module
subclasses Dagster's private ``SqliteEventLogStorage`` and is tested against exactly
``TESTED_DAGSTER_VERSION``: ``test_instance_storage.py`` fails loudly on any other Dagster version
until the equivalence test has been re-run and the constant bumped. ``dagster_yaml`` only writes
this storage into a new ``dagster.yaml`` when ``available()`` (same Dagster version, imports
work); otherwise it writes the stock ``storage: sqlite`` and says so. On PostgreSQL it is never
used (``dagster-postgres`` already writes a batch of asset events as one multi-row insert).

A single run over a day of minute partitions makes Dagster record one ``ASSET_MATERIALIZATION_PLANNED``
and one ``ASSET_MATERIALIZATION`` event per partition per asset: 17,280 events for six assets. Dagster
already hands such events to the storage in batches (``DAGSTER_EVENT_BATCH_SIZE``), but the stock
``SqliteEventLogStorage`` stores a batch one event at a time, and every event opens two SQLite
databases (a new engine each), commits twice and inspects the schema: ~18 ms per partition and asset,
~150 s of a day's backfill spent on bookkeeping. This subclass stores a batch with one transaction on
the run's shard and one on the index shard, the same rows in the same order, so every reader (the UI,
sensors, ``fetch_materializations``) sees exactly what the stock storage would have written.

``btc-anomaly`` writes it into the ``dagster.yaml`` it creates; an existing ``dagster.yaml`` is left
as it is (the stock storage still works, only slower).

On PostgreSQL, ``dagster-postgres`` writes a batch of materializations as one multi-row insert but
stores each ``ASSET_MATERIALIZATION_PLANNED`` event on its own (insert, NOTIFY, tags, asset row:
three round trips): a day's run creation took 13 s for its 10,080 planned events.
``BatchedPostgresEventLogStorage`` (the pooled storage of ``postgres_storage``) stores a run of
planned events as ``dagster-postgres`` stores a run of materializations. Both storages also write
a check's PLANNED rows (one per partition of the run) with the event serialized once.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster
from dagster._core.events import ASSET_EVENTS, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs import SqliteRunStorage  # noqa: F401 - named in dagster.yaml beside the event log
from dagster._core.storage.schedules import SqliteScheduleStorage  # noqa: F401 - named in dagster.yaml
from dagster._serdes import ConfigurableClassData, serialize_value

from btc_anomaly_assets.instance.dagster_yaml import enable_event_batching
from btc_anomaly_assets.instance.postgres_storage import PooledPostgresEventLogStorage

# The Dagster version whose private storage internals this module was checked against (the
# equivalence test in test_instance_storage.py); any other version gets the stock storage.
TESTED_DAGSTER_VERSION = "1.13.27"


def available() -> bool:
    """True when the installed Dagster is the one this module was checked against."""
    return dagster.__version__ == TESTED_DAGSTER_VERSION


def _is_plain_asset_event(event: EventLogEntry) -> bool:
    """Events whose storage is: the run shard row, the index mirror row, its tags, the asset key row."""
    return bool(event.is_dagster_event and event.dagster_event_type in ASSET_EVENTS and event.dagster_event.asset_key)


class _BatchedWrites:
    """What both storages (``SqlEventLogStorage`` subclasses) write the same way."""

    def _store_asset_rows(self, conn, events: list[EventLogEntry], event_ids: list[int]) -> None:
        """A batch's tags, and each asset key row as the batch's events in order would leave it."""
        self._store_asset_event_tags(conn, events, event_ids)
        for event, event_id in _last_event_per_asset_and_type(events, event_ids):
            self._store_asset_event(conn, event, event_id)

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """The stock rows (one PLANNED row per partition of the run's check), with the event serialized
        once and inserted as one executemany: the stock code serializes the event again for every row
        and compiles a 1,440-row multi-VALUES statement, 5.4 s of a day's run creation for 17 checks."""
        planned = event.dagster_event.event_specific_data
        partition_keys = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        shared = dict(
            asset_key=planned.asset_key.to_string(),
            check_name=planned.check_name,
            run_id=event.run_id,
            execution_status=AssetCheckExecutionRecordStatus.PLANNED.value,
            evaluation_event=serialize_value(event),
            evaluation_event_timestamp=self._event_insert_timestamp(event),
            evaluation_event_storage_id=event_id,
        )
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), [{**shared, "partition": key} for key in partition_keys])


class BatchedSqliteEventLogStorage(_BatchedWrites, SqliteEventLogStorage):
    """``SqliteEventLogStorage`` whose ``store_event_batch`` uses one transaction per shard.

    Configure in ``dagster.yaml`` (``btc-anomaly`` writes this)::

        event_log_storage:
          module: btc_anomaly_assets.instance.event_log
          class: BatchedSqliteEventLogStorage
          config:
            base_dir: /abs/path/to/dagster_home/history/runs
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        enable_event_batching()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value) -> BatchedSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store in order; runs of plain asset events go in one transaction per shard, anything else
        (check evaluations, run status events) through the stock ``store_event``."""
        pending: list[EventLogEntry] = []
        for event in events:
            if _is_plain_asset_event(event) and (not pending or pending[0].run_id == event.run_id):
                pending.append(event)
                continue
            self._store_asset_events(pending)
            pending = []
            if _is_plain_asset_event(event):
                pending.append(event)
            else:
                self.store_event(event)
        self._store_asset_events(pending)

    def _store_asset_events(self, events: list[EventLogEntry]) -> None:
        if not events:
            return
        if len(events) == 1:
            self.store_event(events[0])
            return
        rows = [self._event_to_row(event) for event in events]  # serialized once, stored in both shards
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        with self.index_transaction() as conn:
            if conn.dialect.insert_executemany_returning_sort_by_parameter_order:  # SQLite >= 3.35
                inserted = conn.execute(
                    SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True), rows)
                event_ids = [row.id for row in inserted]
            else:
                event_ids = [conn.execute(SqlEventLogStorageTable.insert().values(**row)).inserted_primary_key[0] for row in rows]
            self._store_asset_rows(conn, events, event_ids)


def _is_planned_asset_event(event: EventLogEntry) -> bool:
    return _is_plain_asset_event(event) and event.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED


class BatchedPostgresEventLogStorage(_BatchedWrites, PooledPostgresEventLogStorage):
    """``PooledPostgresEventLogStorage`` that stores a run of planned events like a run of materializations.

    Configured like it (``postgres_url``); ``btc-anomaly`` writes it into a Postgres ``dagster.yaml``.
    """

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Runs of planned events of one run: one multi-row insert and one index transaction; every
        other run of events goes to ``dagster-postgres``' own ``store_event_batch`` as it came."""
        run: list[EventLogEntry] = []
        for event in events:
            if run and (_is_planned_asset_event(event) != _is_planned_asset_event(run[0]) or event.run_id != run[0].run_id):
                self._store_run(run)
                run = []
            run.append(event)
        if run:
            self._store_run(run)

    def _store_run(self, events: list[EventLogEntry]) -> None:
        if len(events) < 2 or not _is_planned_asset_event(events[0]):
            super().store_event_batch(events)
            return
        rows = [self._event_to_row(event) for event in events]
        with self._connect() as conn:
            inserted = conn.execute(
                SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True), rows)
            event_ids = [row.id for row in inserted]
        with self.index_transaction() as conn:
            self._store_asset_rows(conn, events, event_ids)


def _last_event_per_asset_and_type(events: list[EventLogEntry], event_ids: list[int]) -> list[tuple[EventLogEntry, int]]:
    """The asset key row keeps, per column, the value of the latest event that sets it, and each event
    type sets a fixed set of columns: applying the last event of each (asset, type), in order, leaves
    the row exactly as applying all of them would."""
    last: dict[tuple[str, str], int] = {}
    for position, event in enumerate(events):
        last[(event.dagster_event.asset_key.to_string(), event.dagster_event_type.value)] = position
    return [(events[p], event_ids[p]) for p in sorted(last.values())]
