"""Column contracts shared by every layer: the raw lake and the derived DuckDB tables.

Each table is a list of ``Column``; the order is the storage order. Amount columns in the raw
layer are integer satoshi exactly as Blockchair reports them; derived tables carry the unit in
the column name (``_btc``, ``_usd``, ``_sat_vb``, ``_vb``, ``_bytes``). Timestamps are naive UTC.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TIME_BASIS_BLOCK = "block"
TIME_BASIS_FIRST_SEEN = "first_seen"
TIME_BASES = (TIME_BASIS_BLOCK, TIME_BASIS_FIRST_SEEN)

def single_time_basis(values, what: str, error: type[Exception] = ValueError) -> str | None:
    """The one time basis among ``values`` (None when there is none); ``error`` for an unknown one or
    a mix, because minutes of block time and of first-seen time are not comparable."""
    bases = sorted({v for v in values if isinstance(v, str)})
    unknown = [b for b in bases if b not in TIME_BASES]
    if unknown:
        raise error(f"{what}: unknown time_basis values {unknown}")
    if len(bases) > 1:
        raise error(f"{what}: rows mix time bases {bases}; their minutes are not comparable (handle each source separately)")
    return bases[0] if bases else None


SATOSHI_PER_BTC = 100_000_000
# Blockchair: fee_per_kwu is satoshi per 1000 weight units; 1 vB = 4 WU, so sat/vB = fee_per_kwu / 250.
FEE_PER_KWU_PER_SAT_VB = 250.0
# Bitcoin Core 28.3+/30.0 default -minrelaytxfee: 100 sat/kvB = 0.1 sat/vB.
RELAY_FLOOR_SAT_VB = 0.1


@dataclass(frozen=True)
class Column:
    name: str
    arrow_type: pa.DataType
    description: str

    @property
    def duckdb_type(self) -> str:
        return _DUCKDB_TYPES[self.arrow_type]

    @property
    def dagster_type(self) -> str:
        return self.duckdb_type.lower()


_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us"): "TIMESTAMP",
    pa.list_(pa.int64()): "BIGINT[]",
    pa.list_(pa.string()): "VARCHAR[]",
}

# Blockchair transaction fields, in the order of the dump files (the API adds `id` and `date`).
BLOCKCHAIR_FIELDS: list[Column] = [
    Column("block_id", pa.int64(), "Block height; -1 for a mempool transaction"),
    Column("hash", pa.string(), "Transaction id (64 hex)"),
    Column("time", pa.timestamp("us"), "Blockchair `time`, naive UTC: block time for confirmed rows, first-seen for mempool rows"),
    Column("size", pa.int64(), "Serialized size, bytes"),
    Column("weight", pa.int64(), "Weight, weight units (vsize = weight / 4)"),
    Column("version", pa.int64(), "Transaction version"),
    Column("lock_time", pa.int64(), "nLockTime"),
    Column("is_coinbase", pa.bool_(), "Coinbase transaction"),
    Column("has_witness", pa.bool_(), "Has segwit witness data"),
    Column("input_count", pa.int64(), "Number of inputs"),
    Column("output_count", pa.int64(), "Number of outputs"),
    Column("input_total", pa.int64(), "Sum of input values, satoshi"),
    Column("input_total_usd", pa.float64(), "Sum of input values, USD at the day's rate"),
    Column("output_total", pa.int64(), "Sum of output values, satoshi"),
    Column("output_total_usd", pa.float64(), "Sum of output values, USD at the day's rate"),
    Column("fee", pa.int64(), "Fee, satoshi (input_total - output_total)"),
    Column("fee_usd", pa.float64(), "Fee, USD"),
    Column("fee_per_kb", pa.float64(), "Fee, satoshi per 1000 bytes"),
    Column("fee_per_kb_usd", pa.float64(), "Fee, USD per 1000 bytes"),
    Column("fee_per_kwu", pa.float64(), "Fee, satoshi per 1000 weight units (sat/vB = fee_per_kwu / 250)"),
    Column("fee_per_kwu_usd", pa.float64(), "Fee, USD per 1000 weight units"),
    Column("cdd_total", pa.float64(), "Coin-days destroyed"),
]

RAW_TRANSACTION_COLUMNS: list[Column] = [
    *BLOCKCHAIR_FIELDS,
    Column("minute", pa.timestamp("us"), "Start of the UTC minute the transaction is counted in (partition column)"),
    Column("time_basis", pa.string(), "`block` (confirmed data, time = block time) or `first_seen` (mempool arrival time)"),
]

RAW_INT_FIELDS = [c.name for c in BLOCKCHAIR_FIELDS if c.arrow_type == pa.int64()]
RAW_FLOAT_FIELDS = [c.name for c in BLOCKCHAIR_FIELDS if c.arrow_type == pa.float64()]
RAW_BOOL_FIELDS = [c.name for c in BLOCKCHAIR_FIELDS if c.arrow_type == pa.bool_()]


def arrow_schema(columns: list[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type) for c in columns])


def column_names(columns: list[Column]) -> list[str]:
    return [c.name for c in columns]


def _tutorial_averages(suffix: str, window: str) -> list[Column]:
    return [
        Column(f"avg_value_sat{suffix}", pa.float64(), f"Mean output_total over {window}, satoshi (non-coinbase)"),
        Column(f"avg_fee_sat{suffix}", pa.float64(), f"Mean fee over {window}, satoshi (non-coinbase)"),
        Column(
            f"avg_fee_to_value_ratio{suffix}",
            pa.float64(),
            f"Mean of fee / output_total over {window} (non-coinbase rows with fee > 0 and output_total > 0, as the tutorial)",
        ),
        Column(f"avg_input_count{suffix}", pa.float64(), f"Mean input count over {window} (non-coinbase)"),
        Column(f"avg_output_count{suffix}", pa.float64(), f"Mean output count over {window} (non-coinbase)"),
        Column(f"avg_tx_size_bytes{suffix}", pa.float64(), f"Mean serialized size over {window}, bytes (non-coinbase)"),
    ]


# One row per minute of the partition window, empty minutes included (tx_count = 0, other
# statistics NULL). tx_count counts every row; all value/fee/size statistics exclude coinbase rows
# (a coinbase has no fee and carries the block reward, which is not a transfer).
MINUTE_AGGREGATE_COLUMNS: list[Column] = [
    Column("minute", pa.timestamp("us"), "Start of the UTC minute (partition column)"),
    Column("time_basis", pa.string(), "`block` or `first_seen`; NULL for a minute with no rows"),
    Column("tx_count", pa.int64(), "Transactions in the minute, coinbase included (= raw row count)"),
    Column("block_count", pa.int64(), "Distinct blocks with rows in the minute (0 for mempool data)"),
    Column("block_ids", pa.list_(pa.int64()), "Sorted distinct block heights in the minute"),
    *_tutorial_averages("", "the minute"),
    Column("total_value_btc", pa.float64(), "Sum of output_total, BTC"),
    Column("max_value_btc", pa.float64(), "Largest single output_total, BTC"),
    Column("median_value_btc", pa.float64(), "Median output_total, BTC"),
    Column("total_fee_btc", pa.float64(), "Sum of fees, BTC"),
    Column("median_fee_rate_sat_vb", pa.float64(), "Median fee rate, sat/vB (fee_per_kwu / 250)"),
    Column("p90_fee_rate_sat_vb", pa.float64(), "90th percentile fee rate, sat/vB"),
    Column("p99_fee_rate_sat_vb", pa.float64(), "99th percentile fee rate, sat/vB"),
    Column(
        "fee_outlier_tx_count",
        pa.int64(),
        "Non-coinbase transactions paying >= 20x the minute's median fee rate (FEE_OUTLIER_MULTIPLE in "
        "aggregates_sql; 0 when the median is 0 or the minute has no non-coinbase rows)",
    ),
    Column("mean_vsize_vb", pa.float64(), "Mean virtual size, vB (weight / 4)"),
    Column("total_vsize_vb", pa.float64(), "Sum of virtual sizes, vB"),
    Column("fan_in_10_count", pa.int64(), "Transactions with >= 10 inputs"),
    Column("fan_out_10_count", pa.int64(), "Transactions with >= 10 outputs"),
    Column("total_value_usd", pa.float64(), "Sum of output_total_usd (NULL when the source has no USD)"),
    Column("total_fee_usd", pa.float64(), "Sum of fee_usd (NULL when the source has no USD)"),
    Column("tx_count_5min", pa.int64(), "Transactions in the 5 minutes ending with this one, coinbase included"),
    *_tutorial_averages("_5min", "the 5 minutes ending with this one"),
]


# btc.ewma_anomalies: one row per (minute, metric) of the partition window. A metric that is not
# scored in a minute (no data, or not comparable under the time basis) still gets its row with
# severity `info`, rule `not_scored:<reason>` and NULL z_score, so "every minute scored once" holds.
EWMA_ANOMALY_COLUMNS: list[Column] = [
    Column("anomaly_id", pa.string(), "Stable id: sha1 of (mode, metric, minute); the same row always gets the same id"),
    Column("minute", pa.timestamp("us"), "Start of the UTC minute (partition column)"),
    Column(
        "metric",
        pa.string(),
        "What was scored: a MINUTE_AGGREGATE_COLUMNS column, named `log10_<column>` when scored on log10 "
        "(tx_count, fee_outlier_tx_count, log10_total_value_btc, log10_max_value_btc, "
        "log10_median/p90/p99_fee_rate_sat_vb; tx_count, fee_outlier_tx_count and total value are "
        "per block under time basis `block`)",
    ),
    Column("value", pa.float64(), "Observed value of the metric in this minute (unit in the metric name)"),
    Column("baseline", pa.float64(), "EWMA baseline the value was compared with (same unit)"),
    Column("deviation", pa.float64(), "value - baseline (same unit)"),
    Column("scale", pa.float64(), "Spread used to standardise the deviation (same unit)"),
    Column("z_score", pa.float64(), "deviation / scale; NULL when not scored"),
    Column("severity", pa.string(), "info | low | medium | high"),
    Column("rule", pa.string(), "The rule that set the severity (or `not_scored:<reason>`)"),
    Column("mode", pa.string(), "`default` or `seed_parity`"),
    Column("time_basis", pa.string(), "`block` or `first_seen` (NULL when the minute had no rows)"),
    Column("tx_count", pa.int64(), "Transactions in the minute, for context"),
    Column("block_ids", pa.list_(pa.int64()), "Blocks present in the minute, for context"),
    Column("baseline_source", pa.string(),
           "What the baseline came from: `prior` (the shipped priors table only: no past observations yet), "
           "`history` (past observations only) or `both` (blended while history is short); NULL when not "
           "scored or in seed-parity mode (detection v2)"),
]

# btc.coordinated_clusters: one row per detected structural pattern group in a minute.
COORDINATED_CLUSTER_COLUMNS: list[Column] = [
    Column("cluster_id", pa.string(), "Stable id: sha1 of (mode, pattern, minute, sorted member hashes)"),
    Column("minute", pa.timestamp("us"), "Start of the UTC minute (partition column)"),
    Column("pattern", pa.string(), "coinjoin | dust_fanout | fan_in_consolidation | fan_out_batch | similar_burst | seed_fan_in_out"),
    Column("tx_count", pa.int64(), "Member transactions"),
    Column("avg_input_count", pa.float64(), "Mean input count of the members"),
    Column("avg_output_count", pa.float64(), "Mean output count of the members"),
    Column("total_value_btc", pa.float64(), "Sum of member output_total, BTC"),
    Column("sample_tx_hash", pa.string(), "One representative member (the largest by value)"),
    Column("member_hashes", pa.list_(pa.string()), "All member transaction ids"),
    Column("score", pa.float64(), "Pattern score: how far above its own baseline (pattern-specific, documented)"),
    Column("baseline", pa.float64(), "The pattern's baseline the score compares with (e.g. usual members per block)"),
    Column("severity", pa.string(), "info | low | medium | high"),
    Column("rule", pa.string(), "Heuristic that matched, with its parameters"),
    Column("mode", pa.string(), "`default` or `seed_parity`"),
    Column("time_basis", pa.string(), "`block` or `first_seen`"),
    Column("block_ids", pa.list_(pa.int64()), "Blocks the members are in"),
    Column("baseline_source", pa.string(),
           "What the baselines came from: `prior` (shipped priors only), `history` (past units only) or "
           "`both`; NULL in seed-parity mode (detection v2)"),
    Column("evidence", pa.string(),
           "The evidence that set the severity: members | weight_share | inputs | outputs | value_btc | "
           "largest_group (similar bursts) | label; NULL in seed-parity mode (detection v2)"),
    Column("evidence_score", pa.float64(),
           "That evidence's score against its baseline: for mass and largest_group, the value over the "
           "real range's upper end (1 = the largest any real unit showed); for members, the share score "
           "(detection v2)"),
]

SEVERITIES = ("info", "low", "medium", "high")


def severity_rank(severity: str) -> int:
    """0 for info ... 3 for high; raises ValueError naming the bad value."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(f"unknown severity {severity!r}; expected one of {SEVERITIES}") from None


# btc.transaction_forecast: the 30 one-minute steps forecast at the end of a partition window.
TRANSACTION_FORECAST_COLUMNS: list[Column] = [
    Column("minute", pa.timestamp("us"), "Last minute of the window the forecast was made for (partition column)"),
    Column("cutoff", pa.timestamp("us"), "Forecast origin: the first minute not yet observed"),
    Column("ds", pa.timestamp("us"), "Forecast minute (naive UTC)"),
    Column("step", pa.int64(), "Minutes ahead of the cutoff (1..30)"),
    Column("yhat", pa.float64(), "Forecast, transactions per minute (never negative)"),
    Column("yhat_lower", pa.float64(), "Lower bound of the interval (never negative)"),
    Column("yhat_upper", pa.float64(), "Upper bound of the interval"),
    Column("series", pa.string(), "What was modelled: first-seen arrivals, or the trailing block-time rate"),
    Column("time_basis", pa.string(), "`block` or `first_seen`"),
    Column("model", pa.string(), "Model and settings"),
    Column("history_points", pa.int64(), "Points the model was fitted on"),
]

# btc.forecast_excursions: actuals that fell outside an earlier forecast's interval (third alert signal).
FORECAST_EXCURSION_COLUMNS: list[Column] = [
    Column("anomaly_id", pa.string(), "Stable id: sha1 of (series, cutoff, ds)"),
    Column("minute", pa.timestamp("us"), "The minute whose actual was outside the interval (partition column)"),
    Column("cutoff", pa.timestamp("us"), "Origin of the forecast it was compared with"),
    Column("step", pa.int64(), "Minutes ahead of that cutoff"),
    Column("y", pa.float64(), "Actual value (same series as the forecast)"),
    Column("yhat", pa.float64(), "Forecast"),
    Column("yhat_lower", pa.float64(), "Interval lower bound"),
    Column("yhat_upper", pa.float64(), "Interval upper bound"),
    Column("direction", pa.string(), "`above` or `below` the interval"),
    Column("excess_half_widths", pa.float64(), "Distance beyond the bound in interval half-widths"),
    Column("severity", pa.string(), "low (>0) | medium (>1) | high (>2 half-widths)"),
    Column("series", pa.string(), "Series name"),
    Column("time_basis", pa.string(), "`block` or `first_seen`"),
]

# btc.alerts: the delivery record; one row per alert message (single or digest).
ALERT_COLUMNS: list[Column] = [
    Column("alert_id", pa.string(), "Stable id of the message: the run key that requested it"),
    Column("kind", pa.string(), "single | digest | followup | run_failure"),
    Column("asset", pa.string(), "Asset whose items are alerted"),
    Column("item_ids", pa.list_(pa.string()), "anomaly_id / cluster_id values covered by the message"),
    Column("status", pa.string(), "sent | failed (failed ones are retried on a later sensor tick) | skipped"),
    Column("destination", pa.string(), "Where it went, redacted (webhook host, channel, or outbox path)"),
    Column("attempts", pa.int64(), "Delivery attempts so far"),
    Column("error", pa.string(), "Last error, redacted"),
    Column("text", pa.string(), "The fallback text of the message"),
    Column("payload_json", pa.string(), "The Block Kit payload that was (or would be) posted"),
    Column("created_at", pa.timestamp("us"), "When the alert was first requested (naive UTC)"),
    Column("sent_at", pa.timestamp("us"), "When it was delivered (NULL until then)"),
    Column("slack_ts", pa.string(), "Slack's ts of the posted message (bot token only): follow-ups thread under it"),
    Column("thread_ts", pa.string(), "The thread a follow-up was posted in (NULL for a top-level message)"),
    Column("covers_json", pa.string(), "What the message told per incident: severity and explanation content hash (JSON)"),
]
