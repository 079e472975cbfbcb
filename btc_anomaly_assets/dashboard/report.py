"""``btc-anomaly report --out DIR``: the tutorial's report files, written from the DuckDB warehouse.

Users of the original tutorial have scripts that read its CSVs. ``write_report`` writes the same
file names with the tutorial's column names, in the tutorial's column order, from our tables. Where
our data differs from the tutorial's, the file keeps the tutorial's columns first and adds clearly
named columns after them (scripts that select by name are unaffected). Timestamps are naive UTC
written as ``YYYY-MM-DD HH:MM:SS``; rows are sorted by time (the tutorial's were not always).
A table that no run has materialized yet gives a file with the header only (logged).

File by file (tutorial column <- our column):

``tx_count_1min.csv``: ``tx_count_1min`` <- minute_aggregates.tx_count, ``window_start`` <- minute.
    Every minute of the range, **zero-filled**: the tutorial emitted only minutes that held rows,
    which made points days apart look consecutive.
``tx_agg_1min.csv``: ``avg_value`` <- avg_value_sat, ``avg_fee`` <- avg_fee_sat,
    ``avg_fee_to_value_ratio``, ``avg_input_count``, ``avg_output_count``, ``avg_tx_size`` <-
    avg_tx_size_bytes, ``window_start`` <- minute, ``window_end`` <- minute + 1 min. Only minutes
    with transactions (an empty minute has no mean), as the tutorial. Satoshi and bytes, as the
    tutorial; our averages leave out the coinbase.
``tx_agg_5min.csv``: same columns over 5-minute tumbling windows. Our aggregates are per minute
    and carry trailing-5-minute columns (``*_5min``: the 5 minutes ending with that minute), so
    the row of the last minute of each 5-minute-aligned window ``[hh:m0, hh:m0+5)`` gives that
    window. Only windows lying wholly inside the range and holding transactions are written.
``ewma_anomalies.csv``: from the ``tx_count`` metric rows of btc.ewma_anomalies.
    ``tx_count_1min`` <- tx_count (the minute's count), ``window_start`` <- minute, ``ewma`` <-
    baseline, ``residual`` <- deviation, ``z_score``, ``is_anomaly`` <- 1 when severity is
    ``anomaly_min_severity`` (medium) or above, else 0. Extra columns: ``value`` (what was scored,
    so ``residual = value - ewma``; for block time it is transactions *per block* in the minute,
    which differs from ``tx_count_1min`` when two blocks land in one minute), ``severity``,
    ``rule``, ``time_basis``. Every minute is listed; a minute that was not scored (e.g. no block
    landed) has empty ``ewma``/``residual``/``z_score`` and ``is_anomaly`` 0. Our baseline is the
    causal robust EWMA of the past, not the tutorial's (see ``lib/ewma.py``).
``coordinated_attacks.csv``: per minute, from btc.coordinated_clusters at ``cluster_min_severity``
    (low) or above. ``minute``, ``total_flagged`` <- distinct member transactions of those
    clusters, ``avg_input_count``/``avg_output_count`` <- the clusters' means weighted by their
    member counts, ``sample_tx_hash`` <- the sample of the most severe (then largest) cluster.
    Extra: ``patterns`` (the cluster patterns, e.g. ``coinjoin;fan_out_batch``), ``severity``
    (highest). In seed-parity mode the one ``seed_fan_in_out`` cluster per minute is exactly the
    tutorial's rule.
``anomaly_explanations_full.csv``: one row per stored explanation, by minute. ``tx_index`` <-
    0..n-1, ``window_start`` <- minute, ``window_end`` <- minute + 1 min, ``tx_count_1min`` <- the
    minute's tx_count from btc.minute_aggregates (always filled, unlike the tutorial's),
    ``explanation`` <- the narrative followed by the structured answer as text (see
    ``explanation_text``). Extra: ``anomaly_id``, ``kind``, ``subject``, ``severity``, ``source``,
    ``status``.
``prophet_forecast.csv``: the newest forecast in the range: ``ds``, ``yhat``, ``yhat_lower``,
    ``yhat_upper``. Prophet's component columns (``trend``, ``additive_terms``, ...) are not stored
    by our forecast asset, so they are left out, and so are the tutorial's refitted history rows:
    only the 30 future minutes are written. Extra: ``cutoff``, ``step``, ``series`` (for block time
    the series is the trailing 60-minute transactions-per-minute rate, not raw minute counts).
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import SEVERITIES, severity_rank
from btc_anomaly_assets.common.warehouse import SCHEMA, Warehouse
from btc_anomaly_assets.dashboard import queries as q
from btc_anomaly_assets.detection.config import MODES

log = logging.getLogger(__name__)

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
# The partition-key format of the CLI (settings.DATE_FMT; not imported, settings imports Dagster).
CLI_MINUTE_FORMAT = "%Y-%m-%d-%H:%M"

TX_COUNT_1MIN_COLUMNS = ["tx_count_1min", "window_start"]
TX_AGG_COLUMNS = [
    "avg_value",
    "avg_fee",
    "avg_fee_to_value_ratio",
    "avg_input_count",
    "avg_output_count",
    "avg_tx_size",
    "window_start",
    "window_end",
]
EWMA_COLUMNS = ["tx_count_1min", "window_start", "ewma", "residual", "z_score", "is_anomaly"]
EWMA_EXTRA_COLUMNS = ["value", "severity", "rule", "time_basis"]
COORDINATED_COLUMNS = ["minute", "total_flagged", "avg_input_count", "avg_output_count", "sample_tx_hash"]
COORDINATED_EXTRA_COLUMNS = ["patterns", "severity"]
EXPLANATION_COLUMNS = ["tx_index", "window_start", "window_end", "tx_count_1min", "explanation"]
EXPLANATION_EXTRA_COLUMNS = ["anomaly_id", "kind", "subject", "severity", "source", "status"]
FORECAST_COLUMNS = ["ds", "yhat", "yhat_lower", "yhat_upper"]
FORECAST_EXTRA_COLUMNS = ["cutoff", "step", "series"]

# Our per-minute column <- the tutorial's name (1-minute file; the 5-minute file reads the *_5min twins).
_AGG_SOURCES = {
    "avg_value": "avg_value_sat",
    "avg_fee": "avg_fee_sat",
    "avg_fee_to_value_ratio": "avg_fee_to_value_ratio",
    "avg_input_count": "avg_input_count",
    "avg_output_count": "avg_output_count",
    "avg_tx_size": "avg_tx_size_bytes",
}

REPORT_FILES = (
    "tx_count_1min.csv",
    "tx_agg_1min.csv",
    "tx_agg_5min.csv",
    "ewma_anomalies.csv",
    "coordinated_attacks.csv",
    "anomaly_explanations_full.csv",
    "prophet_forecast.csv",
)


# The tables the files are made from.
REPORT_TABLES = (q.MINUTE_AGGREGATES, q.EWMA_ANOMALIES, q.COORDINATED_CLUSTERS, q.TRANSACTION_FORECAST,
                 q.ANOMALY_EXPLANATIONS)


class ReportError(RuntimeError):
    """The report cannot be written; the message names what is wrong and where."""


def _minute_or_none(value: datetime | str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, str) and value.count("-") == 3:  # the CLI's minute keys, 2025-08-13-00:00
            stamp = pd.Timestamp(datetime.strptime(value, CLI_MINUTE_FORMAT))
        else:
            stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ReportError(f"{what}={value!r} is not a UTC minute like 2025-08-13-00:00 or 2025-08-13 00:00") from None
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_pydatetime()


def write_report(
    duckdb_path: str | Path,
    out_dir: str | Path,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    *,
    mode: str | None = None,
    anomaly_min_severity: str = "medium",
    cluster_min_severity: str = "low",
) -> dict[str, int]:
    """Write the tutorial's report files for minutes in ``[start, end)`` (all data when open).

    ``mode`` selects the detection mode's rows (``default`` or ``seed_parity``); ``None`` takes
    ``default`` when present, else the one stored. Returns ``{file name: data rows written}``.
    Raises ``ReportError`` when the DuckDB file does not exist (it is not created) or the range
    is empty.
    """
    path = Path(duckdb_path).expanduser()
    if not path.is_file():
        raise ReportError(f"no DuckDB warehouse at {path}: materialize the assets first (btc-anomaly demo / backfill)")
    start_ts, end_ts = _minute_or_none(start, "start"), _minute_or_none(end, "end")
    if start_ts is not None and end_ts is not None and end_ts <= start_ts:
        raise ReportError(f"empty report range [{start_ts}, {end_ts}): end must be after start")
    for name, value in (("anomaly_min_severity", anomaly_min_severity), ("cluster_min_severity", cluster_min_severity)):
        if value not in SEVERITIES:
            raise ReportError(f"{name}={value!r} is not a severity; expected one of {SEVERITIES}")
    if mode is not None and mode not in MODES:
        raise ReportError(f"mode={mode!r} is not a detection mode; expected one of {MODES} or None")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    window = q.Window(start_ts, end_ts)
    # Every read on one connection: one consistent view of the tables, one lock acquisition.
    with q.reading(Warehouse(str(path))) as wh:
        presence = q.table_presence(wh, REPORT_TABLES)
        for table, present in presence.items():
            if not present:
                log.warning("btc.%s is not materialized yet: its report file gets the header only", table)
        ewma_mode = mode or q.preferred_mode(q.detection_modes(wh, q.EWMA_ANOMALIES))
        cluster_mode = mode or q.preferred_mode(q.detection_modes(wh, q.COORDINATED_CLUSTERS))
        aggregates = _read_aggregates(wh, window)
        ewma_rows = q.ewma_series(wh, "tx_count", window, ewma_mode)
        clusters = _read_clusters(wh, window, cluster_mode, cluster_min_severity)
        explained = q.read_explanations(wh, window, newest_first=False)
        forecast = q.latest_forecast(wh, window)

    frames = {
        "tx_count_1min.csv": tx_count_1min(aggregates),
        "tx_agg_1min.csv": tx_agg_1min(aggregates),
        "tx_agg_5min.csv": tx_agg_5min(aggregates, window),
        "ewma_anomalies.csv": ewma_report(ewma_rows, anomaly_min_severity),
        "coordinated_attacks.csv": coordinated_attacks(clusters),
        "anomaly_explanations_full.csv": explanations_report(explained, aggregates),
        "prophet_forecast.csv": forecast_report(forecast),
    }
    written = {}
    for name in REPORT_FILES:
        frame = frames[name]
        frame.to_csv(out / name, index=False, date_format=TIMESTAMP_FORMAT)
        written[name] = len(frame)
    return written


# --------------------------------------------------------------------------------------------
# Reading


def _read_aggregates(wh: q.Reader, window: q.Window) -> pd.DataFrame:
    cond, params = window.where()
    columns = ["minute", "tx_count", "tx_count_5min", *_AGG_SOURCES.values(), *(f"{c}_5min" for c in _AGG_SOURCES.values())]
    names = ", ".join(dict.fromkeys(columns))
    return q.read_or_empty(
        wh, f"SELECT {names} FROM {SCHEMA}.{q.MINUTE_AGGREGATES} WHERE {cond} ORDER BY minute", params, list(dict.fromkeys(columns))
    )


def _read_clusters(wh: q.Reader, window: q.Window, mode: str | None, min_severity: str) -> pd.DataFrame:
    cond, params = window.where()
    levels = [s for s in SEVERITIES if severity_rank(s) >= severity_rank(min_severity)]
    mode_cond, mode_params = ("mode = ?", [mode]) if mode else ("TRUE", [])
    columns = ["minute", "pattern", "tx_count", "avg_input_count", "avg_output_count", "sample_tx_hash", "member_hashes", "severity"]
    return q.read_or_empty(
        wh,
        f"""SELECT {", ".join(columns)} FROM {SCHEMA}.{q.COORDINATED_CLUSTERS}
            WHERE severity IN {q.sql_in_list(levels)} AND {cond} AND {mode_cond} ORDER BY minute, pattern""",
        [*params, *mode_params],
        columns,
    )


def _minutes(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values).astype("datetime64[us]")


# --------------------------------------------------------------------------------------------
# One frame per file (pure: frames in, frames out)


def tx_count_1min(aggregates: pd.DataFrame) -> pd.DataFrame:
    """``tx_count_1min, window_start`` for every stored minute (zero-filled by the aggregates)."""
    if aggregates.empty:
        return pd.DataFrame(columns=TX_COUNT_1MIN_COLUMNS)
    return pd.DataFrame(
        {"tx_count_1min": aggregates["tx_count"].astype("int64"), "window_start": _minutes(aggregates["minute"])}
    )[TX_COUNT_1MIN_COLUMNS]


def tx_agg_1min(aggregates: pd.DataFrame) -> pd.DataFrame:
    """The tutorial's 1-minute means for minutes that hold transactions."""
    rows = aggregates[aggregates["tx_count"] > 0] if not aggregates.empty else aggregates
    if rows.empty:
        return pd.DataFrame(columns=TX_AGG_COLUMNS)
    start = _minutes(rows["minute"])
    out = pd.DataFrame({name: rows[source].astype(float) for name, source in _AGG_SOURCES.items()})
    out["window_start"] = start
    out["window_end"] = start + pd.Timedelta(minutes=1)
    return out[TX_AGG_COLUMNS].reset_index(drop=True)


def tx_agg_5min(aggregates: pd.DataFrame, window: q.Window = q.Window()) -> pd.DataFrame:
    """5-minute tumbling windows from the trailing-5-minute columns of each window's last minute."""
    if aggregates.empty:
        return pd.DataFrame(columns=TX_AGG_COLUMNS)
    minute = _minutes(aggregates["minute"])
    epoch_minutes = (minute - pd.Timestamp(0)) // pd.Timedelta(minutes=1)
    window_start = minute - pd.Timedelta(minutes=4)
    keep = (epoch_minutes % 5 == 4) & (aggregates["tx_count_5min"].fillna(0) > 0)
    if window.start is not None:
        keep &= window_start >= pd.Timestamp(window.start)  # the window's first minutes are in the range
    rows = aggregates[keep]
    if rows.empty:
        return pd.DataFrame(columns=TX_AGG_COLUMNS)
    out = pd.DataFrame({name: rows[f"{source}_5min"].astype(float) for name, source in _AGG_SOURCES.items()})
    out["window_start"] = window_start[keep]
    out["window_end"] = minute[keep] + pd.Timedelta(minutes=1)
    return out[TX_AGG_COLUMNS].reset_index(drop=True)


def ewma_report(series: pd.DataFrame, anomaly_min_severity: str = "medium") -> pd.DataFrame:
    """The tutorial's ``ewma_anomalies.csv`` from ``tx_count`` rows of btc.ewma_anomalies (module doc)."""
    columns = EWMA_COLUMNS + EWMA_EXTRA_COLUMNS
    if series.empty:
        return pd.DataFrame(columns=columns)
    floor = severity_rank(anomaly_min_severity)
    scored = ~series["rule"].fillna("").str.startswith(q.NOT_SCORED_PREFIX)
    flagged = series["severity"].map(severity_rank) >= floor
    out = pd.DataFrame(
        {
            "tx_count_1min": series["tx_count"].astype("Int64"),
            "window_start": _minutes(series["minute"]),
            "ewma": series["baseline"].astype(float),
            "residual": series["deviation"].astype(float),
            "z_score": series["z_score"].astype(float),
            "is_anomaly": (scored & flagged).astype(int),
            "value": series["value"].astype(float),
            "severity": series["severity"],
            "rule": series["rule"],
            "time_basis": series["time_basis"],
        }
    )
    return out[columns].reset_index(drop=True)


def coordinated_attacks(clusters: pd.DataFrame) -> pd.DataFrame:
    """One row per minute of the given clusters, in the tutorial's columns (module doc)."""
    columns = COORDINATED_COLUMNS + COORDINATED_EXTRA_COLUMNS
    if clusters.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for minute, group in clusters.groupby("minute", sort=True):
        members = {h for hashes in group["member_hashes"] if hashes is not None for h in hashes}
        weights = group["tx_count"].astype(float)
        ranked = group.assign(_rank=group["severity"].map(severity_rank)).sort_values(
            ["_rank", "tx_count", "pattern"], ascending=[False, False, True]
        )
        rows.append(
            {
                "minute": pd.Timestamp(minute),
                # Overlapping clusters (a transaction in two patterns) count once.
                "total_flagged": len(members) if members else int(weights.sum()),
                "avg_input_count": float(np.average(group["avg_input_count"], weights=weights)),
                "avg_output_count": float(np.average(group["avg_output_count"], weights=weights)),
                "sample_tx_hash": ranked["sample_tx_hash"].iloc[0],
                "patterns": ";".join(sorted(group["pattern"].unique())),
                "severity": ranked["severity"].iloc[0],
            }
        )
    out = pd.DataFrame(rows, columns=columns)
    out["minute"] = _minutes(out["minute"])
    return out


def _filled(value) -> bool:
    return not q.is_null(value) and str(value) != ""


def explanation_text(row: dict) -> str:
    """The narrative followed by the structured answer, as plain text for the CSV's ``explanation``.

    ``row`` has the display names of ``queries.EXPLANATION_FIELDS`` (values as stored).
    A failed explanation says so and gives its error instead of the answer.
    """
    head = f"{row.get('kind') or 'anomaly'} {row.get('subject') or ''}".strip()
    lines = [f"[{head}, severity {row.get('severity') or '?'}]"]
    if row.get("status") not in (None, "ok") and not _filled(row.get("narrative")):
        lines.append(f"Explanation failed: {row.get('error') or 'no error recorded'}")
    else:
        if _filled(row.get("narrative")):
            lines += [str(row["narrative"]).strip(), ""]
        if _filled(row.get("summary")):
            lines.append(f"Summary: {row['summary']}")
        lines.append(f"1. Statistically unusual: {q.yes_no(row.get('statistically_unusual')) or 'n/a'}"
                     + (f" - {row['unusual_reason']}" if _filled(row.get("unusual_reason")) else ""))
        lines.append(f"2. Suspected patterns: {q.text_list(row.get('suspected_patterns')) or 'none'}")
        lines.append(f"3. Legitimate causes: {q.text_list(row.get('legitimate_causes')) or 'none given'}")
        lines.append(f"4. Flag for investigation: {q.yes_no(row.get('flag_for_investigation')) or 'n/a'}"
                     + (f" - {row['flag_rationale']}" if _filled(row.get("flag_rationale")) else ""))
        lines.append(f"Confidence: {row.get('confidence') or 'n/a'}; "
                     f"insufficient evidence: {q.yes_no(row.get('insufficient_evidence')) or 'n/a'}")
    lines.append(f"Source: {row.get('source') or '?'} ({row.get('model') or '?'}), status {row.get('status') or '?'}")
    return "\n".join(lines)


def explanations_report(explained: pd.DataFrame, aggregates: pd.DataFrame) -> pd.DataFrame:
    """The tutorial's ``anomaly_explanations_full.csv`` (module doc); ``explained`` from ``read_explanations``."""
    columns = EXPLANATION_COLUMNS + EXPLANATION_EXTRA_COLUMNS
    if explained.empty:
        return pd.DataFrame(columns=columns)
    frame = explained.assign(minute=_minutes(explained["minute"])).sort_values(["minute", "anomaly_id"], kind="stable")
    counts = (
        aggregates.assign(minute=_minutes(aggregates["minute"])).set_index("minute")["tx_count"]
        if not aggregates.empty
        else pd.Series(dtype="Int64")
    )
    out = pd.DataFrame(
        {
            "tx_index": np.arange(len(frame), dtype=np.int64),
            "window_start": frame["minute"].to_numpy(),
            "window_end": (frame["minute"] + pd.Timedelta(minutes=1)).to_numpy(),
            "tx_count_1min": frame["minute"].map(counts).astype("Int64").to_numpy(),
            "explanation": [explanation_text(r) for r in frame.to_dict(orient="records")],
            **{c: frame[c].to_numpy() for c in EXPLANATION_EXTRA_COLUMNS},
        }
    )
    return out[columns]


def forecast_report(forecast: pd.DataFrame) -> pd.DataFrame:
    """The tutorial's ``prophet_forecast.csv`` columns that we store, plus cutoff/step/series."""
    columns = FORECAST_COLUMNS + FORECAST_EXTRA_COLUMNS
    if forecast.empty:
        return pd.DataFrame(columns=columns)
    out = forecast[columns].copy()
    out["ds"] = _minutes(out["ds"])
    out["cutoff"] = _minutes(out["cutoff"])
    return out.sort_values("ds").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Command line (the lead wires ``btc-anomaly report`` to these)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` sub-command's options."""
    parser.add_argument("--out", required=True, help="folder for the report files (created if missing)")
    parser.add_argument("--start", default=None, help="first minute, UTC, e.g. 2025-08-13-00:00 (default: all data)")
    parser.add_argument("--end", default=None, help="end minute, exclusive (default: all data)")
    parser.add_argument("--duckdb", default=None, help="DuckDB warehouse (default: BTC_DUCKDB_PATH or <BTC_DATA_DIR>/warehouse.duckdb)")
    parser.add_argument("--mode", choices=MODES, default=None, help="detection mode rows to report (default: default if present)")
    parser.add_argument("--cluster-min-severity", choices=SEVERITIES, default="low",
                        help="lowest cluster severity in coordinated_attacks.csv (default low)")


def run_report(args: argparse.Namespace) -> int:
    """Write the report from parsed ``add_report_arguments`` options; prints the files; exit code."""
    from btc_anomaly_assets.common import settings

    path = args.duckdb or settings.duckdb_path()
    try:
        written = write_report(path, args.out, args.start, args.end, mode=args.mode,
                               cluster_min_severity=args.cluster_min_severity)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Report from {Path(path).expanduser().resolve()} written to {Path(args.out).expanduser().resolve()}:")
    for name, rows in written.items():
        print(f"  {name:<32} {rows:>8,} rows")
    return 0
