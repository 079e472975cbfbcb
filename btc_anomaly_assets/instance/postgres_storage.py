"""Dagster's PostgreSQL event log, holding one pooled connection per process (public API only).

``dagster-postgres`` opens a new connection for every event it stores (SQLAlchemy ``NullPool``,
so idle processes hold none); a single-run backfill stores a planned and a materialized event
per partition and asset, so connection set-up dominated: 240 minutes of one asset took 14.3 s,
5.5 s with this storage (``benchmarks/bench_event_log.py`` has the day-sized figures). It is
``PostgresEventLogStorage`` switched to a pool of one connection (plus a few overflow) through
its own ``optimize_for_webserver`` hook, the one ``dagster-webserver`` calls on every start, with
no statement timeout (run workers run long queries; the webserver still sets its own). It also
turns on Dagster's event batching (``DAGSTER_EVENT_BATCH_SIZE``) in every process that opens the
instance, so a step's asset events go to PostgreSQL as one multi-row insert.
"""

from __future__ import annotations

from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.utils import pg_url_from_config

from btc_anomaly_assets.instance.dagster_yaml import enable_event_batching

POOL_RECYCLE_SECONDS = 3600
POOL_MAX_OVERFLOW = 4


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """``PostgresEventLogStorage`` with a pooled connection; configured like it (``postgres_url``)."""

    def __init__(self, *args, **kwargs):
        enable_event_batching()
        super().__init__(*args, **kwargs)
        self.optimize_for_webserver(statement_timeout=0, pool_recycle=POOL_RECYCLE_SECONDS, max_overflow=POOL_MAX_OVERFLOW)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> PooledPostgresEventLogStorage:
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True))
