"""The Dagster instance btc-anomaly uses: the ``dagster.yaml`` it writes into a new DAGSTER_HOME.

- ``BTC_DAGSTER_PG_URL`` set: ``dagster-postgres`` run, event-log and schedule storage. The file
  names the variable (``env: BTC_DAGSTER_PG_URL``), never its value, so the secret stays in the
  environment of each process (webserver, daemon, CLI, collector) that opens the instance.
- unset: SQLite under DAGSTER_HOME, as Dagster lays it out (``history/``, ``schedules/``), with the
  project's batched SQLite event log (``event_log.py``, the one module on Dagster's private API)
  when it was checked against the installed Dagster, else Dagster's stock SQLite storage.

Both turn on run monitoring (the daemon fails runs stuck starting or canceling and frees the pool
slots of ended runs); the CLI itself fails runs it started whose process is gone (``recovery``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from btc_anomaly_assets.common import settings

PG_URL_ENV = "BTC_DAGSTER_PG_URL"
# Dagster only hands events to ``store_event_batch`` when this is > 0 (a batch also ends with each
# step's events): dagster-postgres then writes a step's asset events as one multi-row insert, and
# the batched SQLite log as one transaction per database.
EVENT_BATCH_SIZE = "5000"
MARKER = "# Written by btc-anomaly"

_HEADER = f"""\
{MARKER} for this data dir ({{kind}} storage). Edit freely; it is not overwritten once present.
telemetry:
  enabled: false
"""

_POSTGRES_STORAGE = f"""\
# Dagster on PostgreSQL (dagster-postgres): every process that opens this instance (webserver,
# daemon, btc-anomaly, a collector) needs {PG_URL_ENV} in its environment.
# {{event_log_note}}
run_storage:
  module: dagster_postgres
  class: PostgresRunStorage
  config:
    postgres_url:
      env: {PG_URL_ENV}
event_log_storage:
  module: btc_anomaly_assets.instance.{{event_log_module}}
  class: {{event_log_class}}
  config:
    postgres_url:
      env: {PG_URL_ENV}
schedule_storage:
  module: dagster_postgres
  class: PostgresScheduleStorage
  config:
    postgres_url:
      env: {PG_URL_ENV}
"""

_SQLITE_STORAGE = """\
# Stock SQLite run, event-log and schedule storage under this folder.
storage:
  sqlite:
    base_dir: {home}
"""

_BATCHED_SQLITE_STORAGE = """\
# SQLite storage, laid out as Dagster's own; the event log writes each batch of events in one
# transaction per database (btc_anomaly_assets/instance/event_log.py, checked against Dagster {version}).
run_storage:
  module: btc_anomaly_assets.instance.event_log
  class: SqliteRunStorage
  config:
    base_dir: {home}/history
event_log_storage:
  module: btc_anomaly_assets.instance.event_log
  class: BatchedSqliteEventLogStorage
  config:
    base_dir: {home}/history/runs
schedule_storage:
  module: btc_anomaly_assets.instance.event_log
  class: SqliteScheduleStorage
  config:
    base_dir: {home}/schedules
"""

_COMMON = """\
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
# The daemon fails runs stuck STARTING or CANCELING and frees the pool slots an ended run still
# holds. A run whose process died while STARTED is failed by btc-anomaly itself at its next start
# (btc_anomaly_assets/instance/recovery.py): the default run launcher cannot check run workers.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 30
"""


def _dagster_version() -> str:
    from importlib.metadata import version

    return version("dagster")


def use_postgres() -> bool:
    return bool(os.environ.get(PG_URL_ENV, "").strip())


def batched_sqlite_available() -> bool:
    """The batched SQLite event log imports and was checked against the installed Dagster version."""
    try:
        from btc_anomaly_assets.instance import event_log
    except ImportError:
        return False
    return event_log.available()


def dagster_yaml(home: Path | str, postgres: bool | None = None, sqlite_store: str = "auto") -> str:
    """The ``dagster.yaml`` btc-anomaly writes into a new DAGSTER_HOME (storage paths are absolute).

    ``postgres``: default from ``BTC_DAGSTER_PG_URL``. ``sqlite_store``: ``auto`` (batched when
    available), ``batched`` or ``stock``.
    """
    home = str(home) if str(home) == "{home}" else str(Path(home).resolve())
    if postgres is None:
        postgres = use_postgres()
    if postgres:
        if batched_sqlite_available():  # the private-API module was checked against this Dagster
            event_log = dict(event_log_module="event_log", event_log_class="BatchedPostgresEventLogStorage",
                             event_log_note="The event log is dagster-postgres' own with one pooled connection per\n"
                             "# process, storing planned events in batches (instance/event_log.py, checked against "
                             f"Dagster {_dagster_version()}).")
        else:
            event_log = dict(event_log_module="postgres_storage", event_log_class="PooledPostgresEventLogStorage",
                             event_log_note="The event log is dagster-postgres' own with one pooled connection per\n"
                             "# process (instance/postgres_storage.py).")
        return _HEADER.format(kind="PostgreSQL") + _POSTGRES_STORAGE.format(**event_log) + _COMMON
    if sqlite_store not in {"auto", "batched", "stock"}:
        raise ValueError(f"sqlite_store={sqlite_store!r}: expected auto, batched or stock")
    batched = sqlite_store == "batched" or (sqlite_store == "auto" and batched_sqlite_available())
    if batched:
        storage = _BATCHED_SQLITE_STORAGE.format(home=home, version=_dagster_version())
    else:
        storage = _SQLITE_STORAGE.format(home=home)
    return _HEADER.format(kind="SQLite") + storage + _COMMON


def enable_event_batching() -> None:
    """Turn on Dagster's event batching in this process (and the run workers it starts) unless set."""
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)


def pg_url_problem() -> str | None:
    """What is wrong with BTC_DAGSTER_PG_URL's form (never its value), or None."""
    url = os.environ.get(PG_URL_ENV, "").strip()
    if not url:
        return None
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in {"postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"}:
        return f"error: {PG_URL_ENV} must be a URL like postgresql+psycopg2://user:password@host:5432/dagster (got scheme {scheme!r})"
    if scheme in {"postgresql", "postgres", "postgresql+psycopg"}:
        try:
            import psycopg  # noqa: F401 - SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3
        except ImportError:
            return (f"error: {PG_URL_ENV} starts with {scheme}://, which SQLAlchemy 2.1 connects with psycopg 3 (not "
                    "installed); write postgresql+psycopg2://… (dagster-postgres installs psycopg2)")
    return None


def storage_mismatch(config_text: str) -> str | None:
    """A one-line note when an existing dagster.yaml we wrote disagrees with BTC_DAGSTER_PG_URL, else None."""
    if MARKER not in config_text:
        return None
    on_postgres = "postgres_url:" in config_text
    if use_postgres() and not on_postgres:
        return (f"note: {PG_URL_ENV} is set but this DAGSTER_HOME's dagster.yaml uses SQLite (written earlier); "
                "delete that dagster.yaml (or use a new DAGSTER_HOME) to have btc-anomaly write the PostgreSQL one")
    if on_postgres and not use_postgres():
        return (f"error: this DAGSTER_HOME's dagster.yaml uses PostgreSQL but {PG_URL_ENV} is not set; "
                "set it (the same URL the webserver and daemon use)")
    return None


def prepare_dagster_home() -> Path:
    """A persistent DAGSTER_HOME under the data dir, so runs and sensor cursors survive and the UI sees them."""
    problem = pg_url_problem()
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    home = Path(os.environ.get("DAGSTER_HOME") or settings.dagster_home()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(dagster_yaml(home))
        if not batched_sqlite_available():
            instead = ("the pooled PostgreSQL event log without batched planned events" if use_postgres()
                       else "Dagster's stock SQLite storage")
            print(f"note: Dagster {_dagster_version()} is not the version the batched event logs were checked "
                  f"against; using {instead} (slower bookkeeping on long ranges)", file=sys.stderr)
    else:
        note = storage_mismatch(config.read_text())
        if note:
            print(note, file=sys.stderr)
            if note.startswith("error"):
                raise SystemExit(2)
    os.environ["DAGSTER_HOME"] = str(home)
    enable_event_batching()
    # Two processes creating a new SQLite instance at once break its migrations (dagster#27390):
    # create the storage once, under a lock, before any run starts.
    from filelock import FileLock

    with FileLock(str(home / ".create.lock"), timeout=120):
        import dagster as dg

        dg.DagsterInstance.get().dispose()
    return home
