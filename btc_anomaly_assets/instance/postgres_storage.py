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

It also makes a pool's first claim safe when two runs make it at once
(``initialize_concurrency_limit_to_default``).
"""

from __future__ import annotations

import logging
import weakref

from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.utils import pg_url_from_config
from sqlalchemy.exc import DBAPIError

from btc_anomaly_assets.instance.dagster_yaml import enable_event_batching

POOL_RECYCLE_SECONDS = 3600
POOL_MAX_OVERFLOW = 4

log = logging.getLogger(__name__)


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """``PostgresEventLogStorage`` with a pooled connection; configured like it (``postgres_url``)."""

    def __init__(self, *args, **kwargs):
        enable_event_batching()
        self._owner = None
        self._warned_pools: set[str] = set()
        super().__init__(*args, **kwargs)
        self.optimize_for_webserver(statement_timeout=0, pool_recycle=POOL_RECYCLE_SECONDS, max_overflow=POOL_MAX_OVERFLOW)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> PooledPostgresEventLogStorage:
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True))

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        self._owner = weakref.ref(instance)  # Dagster keeps its own reference private

    def initialize_concurrency_limit_to_default(self, concurrency_key: str) -> bool:
        """Dagster's first claim on a pool, made safe when another process initialized it first.

        A step's first claim on a pool with no row yet inserts the pool's default limit. When a
        second run (another process) inserted it in between, Dagster catches the unique violation
        and updates the row in the same transaction; on PostgreSQL the violation has already
        aborted that transaction, so the update fails and so does the run (seen on a fresh instance
        with a live minute and a backfill started together). Here that failure is accepted when the
        pool now has a row holding a default limit (with one warning per process if that limit is
        not the configured one); anything else is raised as it came.
        """
        try:
            return super().initialize_concurrency_limit_to_default(concurrency_key)
        except DBAPIError:
            info = self.get_concurrency_info(concurrency_key)
            if info.limit is None or not info.using_default_limit:
                raise
            default = self._default_pool_limit()
            if default is not None and info.limit != default and concurrency_key not in self._warned_pools:
                self._warned_pools.add(concurrency_key)
                log.warning("pool %r keeps its earlier default limit %s, not the configured %s: Dagster on "
                            "PostgreSQL cannot change a default limit in place; set it with `dagster instance "
                            "concurrency set %s %s`", concurrency_key, info.limit, default, concurrency_key, default)
            return True

    def _default_pool_limit(self) -> int | None:
        instance = self._owner() if self._owner else None
        return instance.global_op_concurrency_default_limit if instance is not None else None
