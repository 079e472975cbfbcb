"""A pool's first claim on Dagster-on-PostgreSQL survives a second process that claimed it first.

Each run's step executor remembers which pools have a limit row. When two runs on a fresh instance
both start before either has claimed the ``duckdb`` pool, both go to insert its default limit; the
second insert violates the unique key. Dagster then updates the row in the same transaction, which
SQLite allows and PostgreSQL refuses (the violation aborted the transaction), so that run failed:
CI saw a live minute started beside a backfill fail this way. Two instances opened from one
``dagster.yaml`` (two processes' views of one database) replay that order here, deterministically.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy.exc import DBAPIError

from btc_anomaly_assets.common.dagster_helpers import DUCKDB_POOL
from btc_anomaly_assets.instance.dagster_yaml import PG_URL_ENV, dagster_yaml

STOCK_EVENT_LOG = "module: dagster_postgres\n  class: PostgresEventLogStorage"


def _write_home(home: Path, event_log: str, default_limit: int = 1) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    text = dagster_yaml(home, postgres=True)
    if event_log != "batched":
        module = {"pooled": "module: btc_anomaly_assets.instance.postgres_storage\n  class: PooledPostgresEventLogStorage",
                  "stock": STOCK_EVENT_LOG}[event_log]
        text = text.replace("module: btc_anomaly_assets.instance.event_log\n  class: BatchedPostgresEventLogStorage", module)
    assert "default_limit: 1 " in text
    (home / "dagster.yaml").write_text(text.replace("default_limit: 1 ", f"default_limit: {default_limit} "))
    return home


@contextmanager
def _two_processes(home: Path) -> Iterator[tuple[dg.DagsterInstance, dg.DagsterInstance]]:
    with dg.DagsterInstance.from_config(str(home)) as first, dg.DagsterInstance.from_config(str(home)) as second:
        yield first, second


@pytest.fixture
def pg_url(monkeypatch, postgres_server) -> str:
    url = postgres_server.new_database("pools")
    monkeypatch.setenv(PG_URL_ENV, url)
    return url


@pytest.mark.parametrize("event_log", ["batched", "pooled"])
def test_a_pool_initialized_by_another_process_is_accepted(tmp_path, pg_url, event_log):
    with _two_processes(_write_home(tmp_path, event_log)) as (first, second):
        assert first.event_log_storage.get_pool_limits() == []
        assert first.event_log_storage.initialize_concurrency_limit_to_default(DUCKDB_POOL) is True
        # The second run's executor had looked before the first inserted: it initializes too.
        assert second.event_log_storage.initialize_concurrency_limit_to_default(DUCKDB_POOL) is True

        info = second.event_log_storage.get_concurrency_info(DUCKDB_POOL)
        assert (info.limit, info.slot_count, info.using_default_limit) == (1, 1, True)
        # The storage's connection is usable after the failed insert: a step claims the one slot.
        claim = second.event_log_storage.claim_concurrency_slot(DUCKDB_POOL, "run-b", "raw_transactions")
        assert claim.is_claimed
        assert not first.event_log_storage.claim_concurrency_slot(DUCKDB_POOL, "run-a", "raw_transactions").is_claimed


def test_dagster_postgres_itself_fails_the_second_initialization(tmp_path, pg_url):
    """Why the override exists. If this starts passing on an upgrade, Dagster fixed it upstream."""
    with _two_processes(_write_home(tmp_path, "stock")) as (first, second):
        assert first.event_log_storage.initialize_concurrency_limit_to_default(DUCKDB_POOL) is True
        with pytest.raises(DBAPIError, match="current transaction is aborted"):
            second.event_log_storage.initialize_concurrency_limit_to_default(DUCKDB_POOL)


def test_a_changed_default_keeps_the_stored_limit_and_says_how_to_change_it(tmp_path, pg_url, caplog):
    with dg.DagsterInstance.from_config(str(_write_home(tmp_path / "before", "batched", default_limit=1))) as before:
        before.event_log_storage.initialize_concurrency_limit_to_default(DUCKDB_POOL)
    # The operator raises default_limit to 2 in dagster.yaml; Dagster re-initializes on the next claim.
    with dg.DagsterInstance.from_config(str(_write_home(tmp_path / "after", "batched", default_limit=2))) as after:
        with caplog.at_level(logging.WARNING, logger="btc_anomaly_assets.instance.postgres_storage"):
            assert after.event_log_storage.initialize_concurrency_limit_to_default(DUCKDB_POOL) is True
            assert after.event_log_storage.initialize_concurrency_limit_to_default(DUCKDB_POOL) is True
        assert after.event_log_storage.get_concurrency_info(DUCKDB_POOL).limit == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # once per process, not on every claim
    assert "keeps its earlier default limit 1, not the configured 2" in warnings[0]
    assert f"dagster instance concurrency set {DUCKDB_POOL} 2" in warnings[0]
