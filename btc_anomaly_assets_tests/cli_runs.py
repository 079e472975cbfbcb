"""Helpers for tests that run ``btc-anomaly`` as a real subprocess and check its results.

``cli_environment`` gives a process its own data dir and DAGSTER_HOME (SQLite, or PostgreSQL with
a URL); ``check_exactly_once`` asserts what a whole demo must leave: every bundled transaction in
the lake once, one aggregate row per minute, and every flagged item alerted exactly once, with
one outbox line per sent alert.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

from btc_anomaly_assets.alerts.destinations import read_outbox
from btc_anomaly_assets.common.lake import raw_path, read_raw_window
from btc_anomaly_assets.common.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[1]
SAMPLE_START, SAMPLE_END = datetime(2025, 8, 13, 0, 0), datetime(2025, 8, 13, 3, 0)
SAMPLE_ROWS = 54_877  # transactions of the 20 bundled blocks (all inside 00:00-03:00)
SAMPLE_MINUTES = 180
FLAGGED = ("medium", "high")


def cli_environment(tmp_path: Path, pg_url: str | None = None, spark_remote: str | None = None,
                    **extra: str) -> dict[str, str]:
    """The CLI's environment: no project setting of this process, a fresh data dir and Dagster home, the
    sample source, runs in the CLI's process; Spark on ``spark_remote`` (a Connect server) or local[1]."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BTC_", "SLACK_", "SPARK_", "BLOCKCHAIR_", "ANTHROPIC_", "DAGSTER_"))}
    env.update(BTC_DATA_DIR=str(tmp_path / "data"), DAGSTER_HOME=str(tmp_path / "data" / "dagster_home"), BTC_SOURCE="sample",
               BTC_RUN_MODE="in-process",  # the run in the CLI's own process: a SIGKILL of it kills the run
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               **({"SPARK_REMOTE": spark_remote} if spark_remote else {"SPARK_MASTER": "local[1]"}), **extra)
    if pg_url:
        env["BTC_DAGSTER_PG_URL"] = pg_url
    return env


def start_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as stream:
        return subprocess.Popen([sys.executable, "-m", "btc_anomaly_assets.cli.main", *args], cwd=REPO, env=env,
                                stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)


def run_cli(args: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int | str, str]:
    """Exit code (or "timeout", after killing it) and the whole output."""
    process = start_cli(args, env, log)
    try:
        code: int | str = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        code = "timeout"
    return code, log.read_text(errors="replace")


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def check_exactly_once(data_dir: Path) -> dict[str, int]:
    """Assert the demo's results hold every row once and alerted every flagged item once; returns counts."""
    raw = read_raw_window(raw_path(str(data_dir / "lake")), SAMPLE_START, SAMPLE_END)
    assert len(raw) == SAMPLE_ROWS and raw["hash"].is_unique, (len(raw), raw["hash"].duplicated().sum())
    wh = Warehouse(str(data_dir / "warehouse.duckdb"))
    counts = wh.query("SELECT count(*) AS n, count(DISTINCT minute) AS minutes, sum(tx_count) AS tx FROM btc.minute_aggregates")
    assert (counts["n"].iloc[0], counts["minutes"].iloc[0], counts["tx"].iloc[0]) == (SAMPLE_MINUTES, SAMPLE_MINUTES, SAMPLE_ROWS)
    for table, column in [("ewma_anomalies", "anomaly_id"), ("coordinated_clusters", "cluster_id"), ("incidents", "incident_id"),
                          ("anomaly_explanations", "anomaly_id"), ("forecast_excursions", "anomaly_id")]:
        duplicated = wh.query(f"SELECT {column} AS id FROM btc.{table} GROUP BY 1 HAVING count(*) > 1")
        assert duplicated.empty, (table, duplicated.head())
    # Alerts are per incident: every incident at an alerted severity is in exactly one first message.
    flagged = set(wh.query("SELECT incident_id AS id FROM btc.incidents WHERE severity IN (SELECT unnest(?))",
                           [list(FLAGGED)])["id"])
    assert flagged, "the sample holds medium+ incidents (the 00:18 and 02:19 whales); none were found"
    sent = wh.query("SELECT alert_id, item_ids FROM btc.alerts WHERE status = 'sent' AND kind IN ('single', 'digest')")
    times_sent = Counter(item for items in sent["item_ids"] for item in items)
    assert set(times_sent) == flagged, {"never alerted": flagged - set(times_sent), "not flagged": set(times_sent) - flagged}
    assert all(n == 1 for n in times_sent.values()), {i: n for i, n in times_sent.items() if n > 1}
    outbox = read_outbox(data_dir / "alerts_outbox.jsonl")
    payloads = [json.dumps(line["payload"], sort_keys=True) for line in outbox]
    every_sent = wh.query("SELECT count(*) AS n FROM btc.alerts WHERE status = 'sent'")["n"].iloc[0]  # follow-ups too
    assert len(outbox) == every_sent, (len(outbox), every_sent)
    assert len(set(payloads)) == len(payloads), Counter(payloads).most_common(1)
    return {"raw": len(raw), "flagged": len(flagged), "alerts_sent": len(sent), "outbox_lines": len(outbox)}
