"""The dagster.yaml the CLI writes: PostgreSQL with BTC_DAGSTER_PG_URL, SQLite without, run monitoring
on, the secret never in the file, and Dagster's private API confined to one module."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest

from btc_anomaly_assets.instance import dagster_yaml as dy
from btc_anomaly_assets.instance.postgres_storage import PooledPostgresEventLogStorage
from btc_anomaly_assets.instance.event_log import BatchedPostgresEventLogStorage

ROOT = Path(__file__).resolve().parents[1]
# The one module allowed on Dagster's private API (pinned, with its upgrade test in test_instance_storage.py).
ALLOWED_PRIVATE = {"btc_anomaly_assets/instance/event_log.py"}
# Modules another branch is moving off the private API; each entry must still need it, so the list
# cannot go stale: drop the entry when that branch is merged (the second test below says so).
PENDING_PRIVATE: dict[str, str] = {}  # module -> why it still needs dagster._ (none left)
PRIVATE = re.compile(r"\bdagster\._")


def _private_users() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / "btc_anomaly_assets").rglob("*.py") if PRIVATE.search(p.read_text())}


def test_no_module_outside_the_storage_module_uses_dagsters_private_api():
    offenders = _private_users() - ALLOWED_PRIVATE - set(PENDING_PRIVATE)
    assert not offenders, f"dagster._ used outside {sorted(ALLOWED_PRIVATE)}: {sorted(offenders)} (use the public API)"


def test_pending_exceptions_still_need_the_private_api():
    stale = set(PENDING_PRIVATE) - _private_users()
    assert not stale, f"{sorted(stale)} no longer use dagster._: remove them from PENDING_PRIVATE"


@pytest.mark.parametrize("postgres, store", [(True, "auto"), (False, "batched"), (False, "stock")])
def test_written_yaml_names_no_private_module(tmp_path, postgres, store):
    text = dy.dagster_yaml(tmp_path, postgres=postgres, sqlite_store=store)
    assert not PRIVATE.search(text), text


def test_postgres_yaml_reads_the_url_from_the_environment_and_never_holds_it(tmp_path, monkeypatch):
    monkeypatch.setenv(dy.PG_URL_ENV, "postgresql+psycopg2://dagster:s3cret-pw@db.internal:5432/dagster")
    text = dy.dagster_yaml(tmp_path)
    assert "s3cret-pw" not in text and "db.internal" not in text
    assert text.count(f"env: {dy.PG_URL_ENV}") == 3  # run, event-log and schedule storage
    assert "run_monitoring:\n  enabled: true" in text


def test_on_an_unchecked_dagster_the_postgres_yaml_names_the_public_api_event_log(tmp_path, monkeypatch):
    assert "class: BatchedPostgresEventLogStorage" in dy.dagster_yaml(tmp_path, postgres=True)
    monkeypatch.setattr(dy, "batched_sqlite_available", lambda: False)
    text = dy.dagster_yaml(tmp_path, postgres=True)
    assert "module: btc_anomaly_assets.instance.postgres_storage\n  class: PooledPostgresEventLogStorage" in text
    assert "event_log" not in text.split("event_log_storage:")[1].split("schedule_storage:")[0].replace("event_log_storage", "")


def test_without_the_url_the_yaml_is_sqlite_under_dagster_home(tmp_path, monkeypatch):
    monkeypatch.delenv(dy.PG_URL_ENV, raising=False)
    text = dy.dagster_yaml(tmp_path)
    assert "postgres" not in text and f"base_dir: {tmp_path.resolve()}/history/runs" in text
    (tmp_path / "dagster.yaml").write_text(text)
    with dg.DagsterInstance.from_config(str(tmp_path.resolve())) as inst:
        assert inst.run_monitoring_enabled
        assert type(inst.event_log_storage).__name__ == "BatchedSqliteEventLogStorage"


def test_stock_sqlite_yaml_is_dagsters_own_storage(tmp_path):
    (tmp_path / "dagster.yaml").write_text(dy.dagster_yaml(tmp_path, postgres=False, sqlite_store="stock"))
    with dg.DagsterInstance.from_config(str(tmp_path)) as inst:
        assert type(inst.event_log_storage).__name__ == "SqliteEventLogStorage"
        assert inst.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0


def test_postgres_instance_on_a_real_server(tmp_path, monkeypatch, postgres_server):
    monkeypatch.setenv(dy.PG_URL_ENV, postgres_server.new_database())
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    (tmp_path / "dagster.yaml").write_text(dy.dagster_yaml(tmp_path))
    with dg.DagsterInstance.from_config(str(tmp_path)) as inst:
        # the pooled storage, with planned events in batches (the private-API module, checked on this Dagster)
        assert type(inst.event_log_storage) is BatchedPostgresEventLogStorage
        assert isinstance(inst.event_log_storage, PooledPostgresEventLogStorage)
        assert type(inst.run_storage).__name__ == "PostgresRunStorage"
        assert type(inst.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert inst.event_log_storage.supports_global_concurrency_limits  # the duckdb pool works on Postgres
        assert inst.run_monitoring_enabled
        import os

        assert int(os.environ["DAGSTER_EVENT_BATCH_SIZE"]) > 0  # switched on by the storage itself

        @dg.asset
        def one() -> int:
            return 1

        assert dg.materialize([one], instance=inst).success
    with dg.DagsterInstance.from_config(str(tmp_path)) as reader:  # a second process's view: the same database
        assert reader.get_latest_materialization_event(dg.AssetKey("one")) is not None


@pytest.mark.parametrize("url, problem", [
    ("postgresql+psycopg2://u:p@h:5432/d", None),
    ("mysql://u:p@h/d", "scheme 'mysql'"),
    ("u:p@h:5432/d", "scheme ''"),
])
def test_url_form_is_checked_without_printing_it(monkeypatch, url, problem):
    monkeypatch.setenv(dy.PG_URL_ENV, url)
    found = dy.pg_url_problem()
    assert (found is None) if problem is None else (problem in found and ":p@" not in found)


def test_a_bare_postgresql_url_without_psycopg3_is_named_clearly(monkeypatch):
    pytest.importorskip("psycopg2")
    try:
        import psycopg  # noqa: F401
        pytest.skip("psycopg 3 is installed: a bare postgresql:// URL works")
    except ImportError:
        pass
    monkeypatch.setenv(dy.PG_URL_ENV, "postgresql://u:secret@h:5432/d")
    found = dy.pg_url_problem()
    assert "postgresql+psycopg2://" in found and "secret" not in found


def test_a_home_written_for_sqlite_is_flagged_when_the_url_appears(tmp_path, monkeypatch):
    monkeypatch.delenv(dy.PG_URL_ENV, raising=False)
    sqlite_text = dy.dagster_yaml(tmp_path)
    assert dy.storage_mismatch(sqlite_text) is None
    monkeypatch.setenv(dy.PG_URL_ENV, "postgresql+psycopg2://u@h/d")
    assert dy.storage_mismatch(sqlite_text).startswith("note:")
    pg_text = dy.dagster_yaml(tmp_path)
    assert dy.storage_mismatch(pg_text) is None
    monkeypatch.delenv(dy.PG_URL_ENV)
    assert dy.storage_mismatch(pg_text).startswith("error:")
    assert dy.storage_mismatch("telemetry:\n  enabled: false\n") is None  # a user's own file is theirs
