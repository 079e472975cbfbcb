"""Every environment variable the project reads, with its default, in one place.

The README's configuration table is generated from ``SETTINGS`` (``btc-anomaly config``), so the
two cannot drift. Resources receive these through ``dg.EnvVar`` (see ``env_or_default``); only
the partitions definition and the CLI read the environment directly, because Dagster needs the
partition range before any resource exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    description: str
    secret: bool = False


SETTINGS: list[Setting] = [
    Setting("BTC_SOURCE", "sample", "`sample` (bundled real 13 Aug 2025 blocks), `blockchair` (live API), `blockchair-dump` (daily dump files), "
            "or a push source read from the landing zone `btc-anomaly collect` writes: `mempool-space` or `bitcoin-core`"),
    Setting("BTC_MEMPOOL_WS_URL", "wss://mempool.space/api/v1/ws", "mempool.space WebSocket (`track-mempool` pushes) for `BTC_SOURCE=mempool-space`"),
    Setting("BTC_MEMPOOL_API_URL", "https://mempool.space/api", "mempool.space REST API (blocks and gap re-fill) for `BTC_SOURCE=mempool-space`"),
    Setting("BTC_CORE_ZMQ_URL", "tcp://127.0.0.1:28332", "Bitcoin Core ZMQ endpoint publishing `rawtx` and `sequence` (`-zmqpubrawtx`, `-zmqpubsequence`)"),
    Setting("BTC_CORE_RPC_URL", "http://127.0.0.1:8332", "Bitcoin Core JSON-RPC URL (input values, fees, blocks) for `BTC_SOURCE=bitcoin-core`"),
    Setting("BTC_CORE_RPC_COOKIE", None, "Path of the node's `.cookie` file (preferred to user/password; re-read after a node restart)"),
    Setting("BTC_CORE_RPC_USER", None, "Bitcoin Core RPC user (`rpcauth`), used when no cookie file is set"),
    Setting("BTC_CORE_RPC_PASSWORD", None, "Bitcoin Core RPC password (secret; never logged)", secret=True),
    Setting("BTC_BLOCKCHAIR_MODE", "mempool", "With `BTC_SOURCE=blockchair`: `mempool` (first-seen times, the live default) or `confirmed` (block times)"),
    Setting("BTC_DUMP_DIR", None, "Folder of `blockchair_bitcoin_transactions_YYYYMMDD*.tsv.gz` files for `blockchair-dump`"),
    Setting("BLOCKCHAIR_API_KEY", None, "Blockchair API key (optional; sent as `key=`, never logged)", secret=True),
    Setting("BLOCKCHAIR_API_URL", "https://api.blockchair.com", "Blockchair API base URL (tests point it at a loopback server)"),
    Setting("BTC_DATA_DIR", "./btc_data", "Where the Parquet lake, the DuckDB file and the Dagster home live"),
    Setting("BTC_LAKE_URL", None, "Raw Parquet lake location; a path or an object-store URL (`s3://…`). Default `<BTC_DATA_DIR>/lake`"),
    Setting("BTC_DUCKDB_PATH", None, "DuckDB warehouse file. Default `<BTC_DATA_DIR>/warehouse.duckdb`"),
    Setting("SPARK_REMOTE", None, "Spark Connect endpoint `sc://host:15002`: run the aggregation on a Connect server (the live path)"),
    Setting("SPARK_MASTER", "local[*]", "Classic Spark master when `SPARK_REMOTE` is unset: `local[*]`, `spark://host:7077`, `yarn`, `k8s://…`"),
    Setting("SPARK_DRIVER_MEMORY", "512m", "Driver heap of a classic Spark session (local or client mode); a day of minutes needs well under 512m"),
    Setting("SPARK_CLASS_ARCHIVE", None, "Folder of the Java class archive local Spark drivers start from (about 2x faster JVM start; made once by `btc-anomaly spark-class-archive`). Default `~/.cache/btc-anomaly-assets`; `off`: never use one"),
    Setting("BTC_DETECTION_MODE", "default", "`default` (time-basis aware, causal, robust) or `seed_parity` (the tutorial's exact rules)"),
    Setting("BTC_DETECTION_PRIORS", "builtin", "Detection baselines at cold start: `builtin` (the shipped table from 31 real blocks), `none` (detection v1) or a path to a priors JSON"),
    Setting("BTC_CLUSTER_SEVERITY_PRESET", "default", "CoinJoin / dust label severities: `default`, `compliance` (mixing = medium) or `privacy_research` (mixing = info)"),
    Setting("ANTHROPIC_API_KEY", None, "Anthropic API key; without it explanations come from the labelled rule-based explainer (secret)", secret=True),
    Setting("BTC_CLAUDE_MODEL", "claude-haiku-4-5", "Claude model id for explanations; checked against the API at start-up"),
    Setting("BTC_CLAUDE_BASE_URL", None, "Anthropic API base URL (a proxy, or a loopback fake in tests)"),
    Setting("BTC_EXPLAIN_MIN_SEVERITY", "medium", "Lowest severity that gets an explanation"),
    Setting("BTC_CLAUDE_MAX_CALLS_PER_RUN", "200", "Cap on Claude calls per run; the rest wait for the next run"),
    Setting("BTC_CLAUDE_DAILY_TOKEN_BUDGET", "2000000", "Input+output tokens allowed per UTC day"),
    Setting("BTC_CLAUDE_BATCH_THRESHOLD", "50", "From this many items in one run, use the Message Batches API (half price)"),
    Setting("SLACK_WEBHOOK_URL", None, "Slack incoming-webhook URL for alerts (secret)", secret=True),
    Setting("SLACK_BOT_TOKEN", None, "Slack bot token with `chat:write`, used with `SLACK_CHANNEL` when no webhook is set (secret)", secret=True),
    Setting("SLACK_CHANNEL", None, "Channel for the bot token, e.g. `#btc-alerts`"),
    Setting("BTC_ALERT_OUTBOX", None, "JSON-lines outbox used when no Slack destination is set. Default `<BTC_DATA_DIR>/alerts_outbox.jsonl`"),
    Setting("BTC_ALERT_MIN_SEVERITY", "medium", "Lowest severity that is alerted: `info`, `low`, `medium`, `high`"),
    Setting("BTC_ALERT_IN_RUN", "on", "`on`: a live minute's EWMA alerts are sent from inside its run (seconds sooner); `off`: only the alert sensor sends"),
    Setting("BTC_DAGSTER_PG_URL", None, "PostgreSQL URL for Dagster's run, event-log and schedule storage, e.g. `postgresql+psycopg2://user:pw@host:5432/dagster`; unset: SQLite in the Dagster home (secret)", secret=True),
    Setting("BTC_EXPLORER_URL", "https://mempool.space", "Public block explorer linked from every incident's transactions (`{base}/tx/{hash}`)"),
    Setting("BTC_DAGSTER_UI_URL", "http://localhost:3000", "Dagster UI base URL used for links in alerts"),
    Setting("BTC_RUN_MODE", "backfill", "How `btc-anomaly demo`/`backfill` run: `backfill` (a Dagster backfill through the webserver and daemon, listed on Runs → Backfills) or `in-process` (one run in the CLI's process, about a minute sooner, no Backfills entry)"),
    Setting("BTC_LOG_LEVEL", "CRITICAL", "Console log level of `btc-anomaly` runs (`DEBUG` … `CRITICAL`); the full log is always in the Dagster instance"),
    Setting("BTC_LIVE", "off", "`on` starts the live sensors: each minute through the graph as it closes (its run launched 20 s ahead), plus a late-data sweep"),
    Setting("BTC_PARTITIONS_START", "2025-08-13-00:00", "First minute partition (`%Y-%m-%d-%H:%M`, UTC). Live deployments set a recent start"),
    Setting("BTC_PARTITIONS_END", "2025-08-15-00:00", "End of the minute partitions (exclusive); `none` for an open-ended live deployment"),
]

_BY_NAME = {s.name: s for s in SETTINGS}

DATE_FMT = "%Y-%m-%d-%H:%M"


def setting(name: str) -> Setting:
    return _BY_NAME[name]


def env_value(name: str) -> str | None:
    """The configured value (environment first, then the default); '' counts as unset."""
    value = os.environ.get(name, "").strip()
    return value or _BY_NAME[name].default


_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


def is_on(name: str) -> bool:
    """An on/off setting; anything else is an error that names the variable."""
    value = (env_value(name) or "").lower()
    if value not in _ON + _OFF:
        raise ValueError(f"{name}={value!r} is not on/off (accepted: {', '.join(_ON + _OFF)})")
    return value in _ON


def env_or_default(name: str):
    """``dg.EnvVar(name)`` when the variable is set (so the UI shows where a value came from), else the default."""
    if os.environ.get(name, "").strip():
        return dg.EnvVar(name)
    return _BY_NAME[name].default


def data_dir() -> Path:
    return Path(env_value("BTC_DATA_DIR")).expanduser().resolve()


def lake_url() -> str:
    return env_value("BTC_LAKE_URL") or str(data_dir() / "lake")


def duckdb_path() -> str:
    return env_value("BTC_DUCKDB_PATH") or str(data_dir() / "warehouse.duckdb")


def alert_outbox() -> str:
    return env_value("BTC_ALERT_OUTBOX") or str(data_dir() / "alerts_outbox.jsonl")


def dagster_home() -> Path:
    return data_dir() / "dagster_home"


def config_table(*, with_current: bool = False) -> str:
    """The README's configuration table; ``with_current`` adds the value in force now (secrets masked)."""
    head = "| variable | default | meaning |" + (" now |" if with_current else "")
    lines = [head, "|---|---|---|" + ("---|" if with_current else "")]
    for s in SETTINGS:
        row = f"| `{s.name}` | {('`' + s.default + '`') if s.default else '—'} | {s.description} |"
        if with_current:
            now = os.environ.get(s.name, "")
            row += f" {('(set)' if now else '') if s.secret else now} |"
        lines.append(row)
    return "\n".join(lines)
