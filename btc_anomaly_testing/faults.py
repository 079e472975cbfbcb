"""A fault table of our own: each fault injected into a real `btc-anomaly backfill`, then counted.

Every scenario runs the CLI as a user would (a subprocess with its own ``BTC_DATA_DIR``), injects
one fault (a dead process, a service answering errors, a corrupted or locked file, a full disk),
lets the user's next action happen (a re-run, the next alert tick) and then takes a
:class:`Census` of what is stored and delivered. Comparing it with a clean reference run of the
same range gives what was **lost**, **duplicated** or left **pending**. ``benchmarks/faults.py``
prints the whole table; ``test_faults.py`` runs a cheaper subset in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from btc_anomaly_assets.common.lake import raw_path, read_raw_window
from btc_anomaly_assets.common.settings import DATE_FMT, SETTINGS

# The table's keys: a row stored twice under one key is a duplicate, a reference key missing a loss.
TABLE_KEYS = {
    "minute_aggregates": ("minute",),
    "ewma_anomalies": ("minute", "metric"),
    "coordinated_clusters": ("cluster_id",),
    "transaction_forecast": ("cutoff", "ds"),
}
STEPS = ("raw_transactions", "minute_aggregates", "ewma_anomalies", "coordinated_clusters", "incidents", "anomaly_explanations",
         "transaction_forecast")


@dataclass
class RunRecord:
    label: str
    returncode: int
    seconds: float
    output: str


@dataclass
class Census:
    raw_hashes: Counter
    table_keys: dict[str, Counter]
    unreadable_files: list[str]
    delivered: Counter  # message text at the destination -> times delivered
    alerted_items: Counter  # item id -> sent alert records naming it
    pending_alerts: int
    explanation_sources: Counter

    @property
    def raw_rows(self) -> int:
        return sum(self.raw_hashes.values())


@dataclass
class Outcome:
    fault: str
    runs: list[RunRecord]
    lost: int
    duplicated: int
    pending: int
    delivered: int
    expected_delivered: int
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        runs = " → ".join(f"{r.label} {'ok' if r.returncode == 0 else f'exit {r.returncode}'} {r.seconds:.0f}s" for r in self.runs)
        return (f"| {self.fault} | {runs} | {self.lost} | {self.duplicated} | {self.pending} | "
                f"{self.delivered}/{self.expected_delivered} | {'; '.join(self.notes)} |")


TABLE_HEADER = ("| fault | runs | lost | duplicated | pending | alerts delivered / expected | notes |\n"
                "|---|---|---:|---:|---:|---:|---|")


class Scenario:
    """One data dir, one range; runs the CLI and takes its census."""

    def __init__(self, root: Path, start: str, end: str, *, env: dict[str, str] | None = None):
        self.root, self.start, self.end = Path(root), start, end
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.runs: list[RunRecord] = []

    # -- running ---------------------------------------------------------------------------------

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        ours = {s.name for s in SETTINGS}
        env = {k: v for k, v in os.environ.items() if k not in ours and k != "DAGSTER_HOME"}
        # In-process runs: a SIGKILL then kills the run itself, as a crash would (a backfill's run lives in the daemon).
        env.update({"BTC_DATA_DIR": str(self.data_dir), "BTC_LOG_LEVEL": "INFO", "BTC_RUN_MODE": "in-process",
                    **self.env, **(extra or {})})
        return env

    def command(self, start: str | None = None, end: str | None = None) -> list[str]:
        return [sys.executable, "-m", "btc_anomaly_assets.cli.main", "backfill", start or self.start, end or self.end]

    def run(self, label: str, *, extra_env: dict[str, str] | None = None, timeout: float = 600,
            preexec: Callable[[], None] | None = None, over: tuple[str, str] | None = None) -> RunRecord:
        began = time.monotonic()
        try:
            done = subprocess.run(self.command(*(over or ())), env=self.environment(extra_env), capture_output=True, text=True,
                                  timeout=timeout, preexec_fn=preexec)
            record = RunRecord(label, done.returncode, time.monotonic() - began, done.stdout + done.stderr)
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            record = RunRecord(label, -1, time.monotonic() - began, output + f"\n(timed out after {timeout:.0f} s)")
        self.runs.append(record)
        return record

    def run_and_kill_at(self, step: str, *, timeout: float = 600) -> RunRecord:
        """Start the run, SIGKILL its whole process group (Spark's JVM too) once ``step`` has started."""
        began = time.monotonic()
        process = subprocess.Popen(self.command(), env=self.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        lines: list[str] = []
        killed = threading.Event()

        def watch() -> None:
            for line in process.stdout:
                lines.append(line)
                if f"btc__{step} - STEP_START" in line and not killed.is_set():
                    time.sleep(0.5)  # inside the step, not at its first line
                    os.killpg(process.pid, signal.SIGKILL)
                    killed.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        watcher.join(timeout=5)
        label = f"SIGKILL in {step}" if killed.is_set() else f"ran to the end before {step} started"
        record = RunRecord(label, process.returncode, time.monotonic() - began, "".join(lines))
        self.runs.append(record)
        return record

    def deliver_pending(self, extra_env: dict[str, str] | None = None) -> RunRecord:
        """The alert sensor's next tick, as ``dagster dev`` would run it (in a fresh process)."""
        code = ("from btc_anomaly_assets.instance.dagster_yaml import prepare_dagster_home; prepare_dagster_home(); "
                "import dagster as dg; from btc_anomaly_assets.cli.main import deliver_alerts; "
                "from btc_anomaly_assets.definitions import defs; deliver_alerts(defs, dg.DagsterInstance.get())")
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code], env=self.environment(extra_env), capture_output=True, text=True,
                              timeout=300)
        record = RunRecord("alert tick", done.returncode, time.monotonic() - began, done.stdout + done.stderr)
        self.runs.append(record)
        return record

    # -- counting --------------------------------------------------------------------------------

    def census(self, *, delivered_texts: list[str] | None = None) -> Census:
        from datetime import datetime

        start, end = (datetime.strptime(k, DATE_FMT) for k in (self.start, self.end))
        lake = raw_path(str(self.data_dir / "lake"))
        unreadable = []
        for path in sorted(Path(lake).rglob("*.parquet")) if Path(lake).exists() else []:
            try:
                pq.read_metadata(path)
            except Exception as exc:  # a half-written or corrupted file: exactly what the table must show
                unreadable.append(f"{path.name}: {type(exc).__name__}")
        try:
            raw = read_raw_window(lake, start, end)
            raw_hashes = Counter(raw["hash"])
        except Exception:
            raw_hashes = Counter()
        table_keys: dict[str, Counter] = {}
        pending = 0
        alerted: Counter = Counter()
        sources: Counter = Counter()
        warehouse = self.data_dir / "warehouse.duckdb"
        if warehouse.exists():
            with duckdb.connect(str(warehouse), read_only=True) as con:
                tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                                 "WHERE table_schema = 'btc'").fetchall()}
                for table, key in TABLE_KEYS.items():
                    if table in tables:
                        rows = con.execute(f"SELECT {', '.join(key)} FROM btc.{table}").fetchall()
                        table_keys[table] = Counter(rows)
                if "alerts" in tables:
                    pending = con.execute("SELECT count(*) FROM btc.alerts WHERE status <> 'sent'").fetchone()[0]
                    for (items,) in con.execute("SELECT item_ids FROM btc.alerts WHERE status = 'sent'").fetchall():
                        alerted.update(items or [])
                if "anomaly_explanations" in tables:
                    sources = Counter(dict(con.execute("SELECT source, count(*) FROM btc.anomaly_explanations "
                                                   "GROUP BY source").fetchall()))
        if delivered_texts is None:
            outbox = self.data_dir / "alerts_outbox.jsonl"
            delivered_texts = []
            if outbox.exists():
                for line in outbox.read_text().splitlines():
                    if line.strip():
                        delivered_texts.append(json.loads(line)["payload"].get("text", ""))
        return Census(raw_hashes, table_keys, unreadable, Counter(delivered_texts), alerted, pending, sources)

    def copy_from(self, other: Scenario) -> None:
        """Start from the state another scenario left (e.g. a clean run), in this scenario's own folder."""
        shutil.rmtree(self.data_dir)
        shutil.copytree(other.data_dir, self.data_dir)


def compare(fault: str, scenario: Scenario, reference: Census, after: Census, notes: list[str] | None = None) -> Outcome:
    """What the fault cost, against the clean reference census."""
    notes = list(notes or [])
    lost = sum((reference.raw_hashes - after.raw_hashes).values())
    duplicated = sum(n - 1 for n in after.raw_hashes.values() if n > 1)
    for table, keys in reference.table_keys.items():
        got = after.table_keys.get(table, Counter())
        missing = len(set(keys) - set(got))
        doubled = sum(n - 1 for n in got.values() if n > 1)
        if missing or doubled:
            notes.append(f"{table}: {missing} missing, {doubled} doubled")
        lost += missing
        duplicated += doubled
    doubled_messages = sum(n - 1 for n in after.delivered.values() if n > 1)
    if doubled_messages:
        notes.append(f"{doubled_messages} message(s) delivered twice")
    duplicated += doubled_messages
    missing_items = len(set(reference.alerted_items) - set(after.alerted_items))
    if missing_items:
        notes.append(f"{missing_items} alerted item(s) never delivered")
    lost += missing_items
    if after.unreadable_files:
        notes.append(f"unreadable lake files: {', '.join(after.unreadable_files[:3])}")
        lost += len(after.unreadable_files)
    return Outcome(fault, scenario.runs, lost, duplicated, after.pending_alerts, sum(after.delivered.values()),
                   sum(reference.delivered.values()), notes)
