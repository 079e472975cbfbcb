"""What the dashboard reads from DuckDB: pure functions of a ``Warehouse`` that return DataFrames.

Every function runs its SQL on each call (the dashboard calls them on every refresh), so the
charts follow the warehouse as Dagster runs write to it. Each query takes one short connection
under the warehouse's file lock and releases it before the frame is returned.

A table that no run has materialized yet reads as an empty frame with the documented columns
(never an error): ``table_presence`` tells the caller which tables exist so it can say
"not materialized yet" instead of drawing an empty chart silently.

Windows are half-open ``[start, end)`` on the ``minute`` column; ``None`` leaves that side open.
All timestamps are naive UTC, as stored.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterator, Protocol, Sequence

import duckdb
import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import SEVERITIES, severity_rank
from btc_anomaly_assets.common.warehouse import SCHEMA, Warehouse
from btc_anomaly_assets.forecast.model import BLOCK_RATE_WINDOW_MINUTES, ForecastError, forecast_series

MINUTE_AGGREGATES = "minute_aggregates"
EWMA_ANOMALIES = "ewma_anomalies"
COORDINATED_CLUSTERS = "coordinated_clusters"
TRANSACTION_FORECAST = "transaction_forecast"
FORECAST_EXCURSIONS = "forecast_excursions"
ANOMALY_EXPLANATIONS = "anomaly_explanations"
DASHBOARD_TABLES = (
    MINUTE_AGGREGATES,
    EWMA_ANOMALIES,
    COORDINATED_CLUSTERS,
    TRANSACTION_FORECAST,
    FORECAST_EXCURSIONS,
    ANOMALY_EXPLANATIONS,
)

# The tutorial drew medium-and-above as the red "anomaly" markers; the alerts use the same floor.
DEFAULT_FLAG_SEVERITY = "medium"
NOT_SCORED_PREFIX = "not_scored"


class Reader(Protocol):
    """What the queries need: a ``Warehouse``, or a ``SharedConnection`` for several queries at once."""

    def query(self, sql: str, params: Sequence | None = None) -> pd.DataFrame: ...


class SharedConnection:
    """Runs several queries on one open connection (same ``query`` as ``Warehouse``).

    Each ``Warehouse.query`` takes the file lock and opens DuckDB (~15 ms); a dashboard view runs
    about ten queries, so it reads through one connection instead (see ``reading``).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection):
        # Without this, a query of a table that does not exist yet makes DuckDB look for a Python
        # object of that name in the calling module (a "replacement scan") and e.g. find the
        # function ``forecast_excursions`` here instead of reporting the missing table.
        con.execute("SET python_enable_replacements = false")
        self._con = con

    def query(self, sql: str, params: Sequence | None = None) -> pd.DataFrame:
        return self._con.execute(sql, list(params or [])).df()


@contextmanager
def reading(wh: Warehouse) -> Iterator[SharedConnection]:
    """One short connection under the warehouse lock for a group of queries; closed on exit."""
    with wh.connect() as con:
        yield SharedConnection(con)


@dataclass(frozen=True)
class Window:
    """A half-open minute window ``[start, end)``; ``None`` leaves a side open."""

    start: datetime | None = None
    end: datetime | None = None

    def where(self, column: str = "minute") -> tuple[str, list]:
        """A SQL condition (``TRUE`` when open on both sides) and its parameters."""
        parts, params = [], []
        if self.start is not None:
            parts.append(f'"{column}" >= ?')
            params.append(self.start)
        if self.end is not None:
            parts.append(f'"{column}" < ?')
            params.append(self.end)
        return (" AND ".join(parts) or "TRUE"), params


def trailing_window(latest_minute: datetime | None, hours: float | None, earliest_minute: datetime | None = None) -> Window:
    """The last ``hours`` of data ending with ``latest_minute`` (inclusive); ``None`` hours = all data.

    Relative to the newest stored minute rather than the wall clock, so a backfill of an old day
    shows its data, and a live deployment shows the newest minutes. The start is never before
    ``earliest_minute`` (the first stored minute), so a short history fills the charts' width.
    """
    if latest_minute is None or hours is None:
        return Window()
    end = pd.Timestamp(latest_minute).to_pydatetime() + timedelta(minutes=1)
    start = end - timedelta(hours=hours)
    if earliest_minute is not None:
        start = max(start, pd.Timestamp(earliest_minute).to_pydatetime())
    return Window(start, end)


# --------------------------------------------------------------------------------------------
# Plumbing


def _severity_list(min_severity: str) -> list[str]:
    """Severities at or above ``min_severity`` (raises ValueError naming a bad value)."""
    floor = severity_rank(min_severity)
    return [s for s in SEVERITIES if severity_rank(s) >= floor]


def sql_in_list(values: Sequence[str]) -> str:
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


def read_or_empty(wh: Reader, sql: str, params: list, columns: Sequence[str]) -> pd.DataFrame:
    """Run ``sql``; a table that does not exist yet reads as an empty frame with ``columns``."""
    try:
        return wh.query(sql, params)
    except duckdb.CatalogException as exc:
        if "does not exist" in str(exc):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        raise


def table_presence(wh: Reader, tables: Sequence[str] = DASHBOARD_TABLES) -> dict[str, bool]:
    """Which of ``btc.<table>`` exist (one connection for all of them)."""
    found = wh.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [SCHEMA]
    )["table_name"].tolist()
    return {t: t in found for t in tables}


def data_extent(wh: Reader) -> tuple[datetime | None, datetime | None]:
    """First and last minute in ``btc.minute_aggregates`` (falls back to ``btc.ewma_anomalies``)."""
    for table in (MINUTE_AGGREGATES, EWMA_ANOMALIES):
        frame = read_or_empty(wh, f"SELECT min(minute) AS lo, max(minute) AS hi FROM {SCHEMA}.{table}", [], ["lo", "hi"])
        if len(frame) and pd.notna(frame["hi"].iloc[0]):
            return pd.Timestamp(frame["lo"].iloc[0]).to_pydatetime(), pd.Timestamp(frame["hi"].iloc[0]).to_pydatetime()
    return None, None


def time_basis(wh: Reader, window: Window = Window()) -> str | None:
    """The time basis of the minute aggregates in the window (``block``, ``first_seen``, ``mixed`` or None)."""
    cond, params = window.where()
    frame = read_or_empty(
        wh,
        f"SELECT DISTINCT time_basis FROM {SCHEMA}.{MINUTE_AGGREGATES} WHERE {cond} AND time_basis IS NOT NULL",
        params,
        ["time_basis"],
    )
    bases = sorted(frame["time_basis"].dropna().unique())
    if not bases:
        return None
    return bases[0] if len(bases) == 1 else "mixed"


# --------------------------------------------------------------------------------------------
# Overview: EWMA anomalies


EWMA_SERIES_COLUMNS = ["minute", "value", "baseline", "deviation", "z_score", "severity", "rule", "tx_count", "time_basis", "mode"]


def detection_modes(wh: Reader, table: str = EWMA_ANOMALIES) -> list[str]:
    """The detection modes present in ``btc.ewma_anomalies`` or ``btc.coordinated_clusters``."""
    frame = read_or_empty(wh, f"SELECT DISTINCT mode FROM {SCHEMA}.{table} ORDER BY mode", [], ["mode"])
    return [m for m in frame["mode"].tolist() if m is not None]


def preferred_mode(modes: Sequence[str]) -> str | None:
    """``default`` when present (the causal detector), else the only/first mode, else None."""
    if not modes:
        return None
    return "default" if "default" in modes else sorted(modes)[0]


def _mode_condition(mode: str | None) -> tuple[str, list]:
    return ("mode = ?", [mode]) if mode else ("TRUE", [])


def ewma_metrics(wh: Reader, mode: str | None = None) -> list[str]:
    """Metric names scored in ``btc.ewma_anomalies``, ``tx_count`` first."""
    mcond, mparams = _mode_condition(mode)
    frame = read_or_empty(
        wh, f"SELECT DISTINCT metric FROM {SCHEMA}.{EWMA_ANOMALIES} WHERE {mcond} ORDER BY metric", mparams, ["metric"]
    )
    metrics = frame["metric"].tolist()
    return sorted(metrics, key=lambda m: (m != "tx_count", m))


def ewma_series(wh: Reader, metric: str, window: Window = Window(), mode: str | None = None) -> pd.DataFrame:
    """One metric's rows: the observed value, its EWMA baseline, z, severity and rule, by minute.

    Rows that were not scored (``rule`` = ``not_scored:*``) are included with their NULL z so the
    caller can tell "no data" from "normal".
    """
    cond, params = window.where()
    mcond, mparams = _mode_condition(mode)
    columns = ", ".join(EWMA_SERIES_COLUMNS)
    return read_or_empty(
        wh,
        f"SELECT {columns} FROM {SCHEMA}.{EWMA_ANOMALIES} WHERE metric = ? AND {cond} AND {mcond} ORDER BY minute",
        [metric, *params, *mparams],
        EWMA_SERIES_COLUMNS,
    )


def flagged_minutes(
    wh: Reader, window: Window = Window(), min_severity: str = DEFAULT_FLAG_SEVERITY, mode: str | None = None
) -> pd.DataFrame:
    """Minutes with at least one metric at ``min_severity`` or above: minute, severity (the highest), metrics."""
    cond, params = window.where()
    mcond, mparams = _mode_condition(mode)
    levels = _severity_list(min_severity)
    rank = "CASE severity " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(SEVERITIES)) + " END"
    frame = read_or_empty(
        wh,
        f"""SELECT minute, max({rank}) AS rank, string_agg(metric || ' (' || severity || ')', ', ' ORDER BY metric) AS metrics
            FROM {SCHEMA}.{EWMA_ANOMALIES}
            WHERE severity IN {sql_in_list(levels)} AND rule NOT LIKE '{NOT_SCORED_PREFIX}%' AND {cond} AND {mcond}
            GROUP BY minute ORDER BY minute""",
        [*params, *mparams],
        ["minute", "rank", "metrics"],
    )
    frame["severity"] = [SEVERITIES[int(r)] for r in frame["rank"]]
    return frame[["minute", "severity", "metrics"]]


def zscore_by_date_hour(wh: Reader, metric: str, window: Window = Window(), mode: str | None = None) -> pd.DataFrame:
    """Mean z-score of ``metric`` per UTC date and hour (scored minutes only): date, hour, mean_z, minutes."""
    cond, params = window.where()
    mcond, mparams = _mode_condition(mode)
    return read_or_empty(
        wh,
        f"""SELECT CAST(minute AS DATE) AS date, CAST(hour(minute) AS INTEGER) AS hour,
                   avg(z_score) AS mean_z, count(*) AS minutes
            FROM {SCHEMA}.{EWMA_ANOMALIES}
            WHERE metric = ? AND z_score IS NOT NULL AND {cond} AND {mcond}
            GROUP BY 1, 2 ORDER BY 1, 2""",
        [metric, *params, *mparams],
        ["date", "hour", "mean_z", "minutes"],
    )


def _minute_status(wh: Reader, window: Window, min_severity: str, mode: str | None) -> pd.DataFrame:
    """Per minute: scored (any metric scored) and anomalous (any metric at min_severity or above)."""
    cond, params = window.where()
    mcond, mparams = _mode_condition(mode)
    levels = sql_in_list(_severity_list(min_severity))
    return read_or_empty(
        wh,
        f"""SELECT minute,
                   bool_or(rule NOT LIKE '{NOT_SCORED_PREFIX}%') AS scored,
                   bool_or(rule NOT LIKE '{NOT_SCORED_PREFIX}%' AND severity IN {levels}) AS anomalous
            FROM {SCHEMA}.{EWMA_ANOMALIES} WHERE {cond} AND {mcond}
            GROUP BY minute""",
        [*params, *mparams],
        ["minute", "scored", "anomalous"],
    )


def anomalies_by_hour(
    wh: Reader, window: Window = Window(), min_severity: str = DEFAULT_FLAG_SEVERITY, mode: str | None = None
) -> pd.DataFrame:
    """Anomalous minutes (any metric at ``min_severity``+) per UTC hour of day, by their highest severity.

    Columns: hour (0-23), severity, minutes. Hours without anomalies are left out.
    """
    flagged = flagged_minutes(wh, window, min_severity, mode)
    if flagged.empty:
        return pd.DataFrame({"hour": pd.Series(dtype=int), "severity": pd.Series(dtype=object), "minutes": pd.Series(dtype=int)})
    flagged["hour"] = pd.to_datetime(flagged["minute"]).dt.hour
    counts = flagged.groupby(["hour", "severity"]).size().reset_index(name="minutes")
    return counts.sort_values(["hour", "severity"], key=lambda s: s.map(severity_rank) if s.name == "severity" else s)


def anomaly_share(
    wh: Reader, window: Window = Window(), min_severity: str = DEFAULT_FLAG_SEVERITY, mode: str | None = None
) -> pd.DataFrame:
    """Minutes by status: ``anomalous``, ``normal`` (scored, nothing at min_severity+), ``not scored``.

    ``not scored`` minutes had no usable observation for any metric (for block-time data: no block
    landed), so they are neither normal nor anomalous. Columns: status, minutes (all three rows).
    """
    status = _minute_status(wh, window, min_severity, mode)
    scored = status["scored"].fillna(False).astype(bool)
    anomalous = status["anomalous"].fillna(False).astype(bool)
    return pd.DataFrame(
        {
            "status": ["anomalous", "normal", "not scored"],
            "minutes": [int(anomalous.sum()), int((scored & ~anomalous).sum()), int((~scored).sum())],
        }
    )


# --------------------------------------------------------------------------------------------
# Detection & forecasting


def clusters_over_time(
    wh: Reader, window: Window = Window(), min_severity: str = "info", mode: str | None = None
) -> pd.DataFrame:
    """Clusters per minute and pattern at ``min_severity`` or above.

    Columns: minute, pattern, clusters, members (sum of member transactions), severity (highest).
    """
    cond, params = window.where()
    mcond, mparams = _mode_condition(mode)
    rank = "CASE severity " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(SEVERITIES)) + " END"
    frame = read_or_empty(
        wh,
        f"""SELECT minute, pattern, count(*) AS clusters, sum(tx_count) AS members, max({rank}) AS rank
            FROM {SCHEMA}.{COORDINATED_CLUSTERS}
            WHERE severity IN {sql_in_list(_severity_list(min_severity))} AND {cond} AND {mcond}
            GROUP BY minute, pattern ORDER BY minute, pattern""",
        [*params, *mparams],
        ["minute", "pattern", "clusters", "members", "rank"],
    )
    frame["severity"] = [SEVERITIES[int(r)] for r in frame["rank"]]
    return frame[["minute", "pattern", "clusters", "members", "severity"]]


FORECAST_COLUMNS = ["cutoff", "ds", "step", "yhat", "yhat_lower", "yhat_upper", "series", "time_basis", "model", "history_points"]


def latest_forecast(wh: Reader, window: Window = Window()) -> pd.DataFrame:
    """The forecast with the newest cutoff whose origin lies in the window (all its steps, by ds).

    The cutoff is the first unobserved minute, so the window's end (exclusive) is an allowed cutoff.
    """
    conds, params = [], []
    if window.start is not None:
        conds.append("cutoff > ?")
        params.append(window.start)
    if window.end is not None:
        conds.append("cutoff <= ?")
        params.append(window.end)
    cond = " AND ".join(conds) or "TRUE"
    columns = ", ".join(FORECAST_COLUMNS)
    return read_or_empty(
        wh,
        f"""SELECT {columns} FROM {SCHEMA}.{TRANSACTION_FORECAST}
            WHERE cutoff = (SELECT max(cutoff) FROM {SCHEMA}.{TRANSACTION_FORECAST} WHERE {cond})
            ORDER BY ds""",
        params,
        FORECAST_COLUMNS,
    )


def forecast_actuals(wh: Reader, forecast: pd.DataFrame, context_minutes: int = 180) -> pd.DataFrame:
    """The observed values of the forecast's series around it: ds, y, series, time_basis.

    Built with ``forecast_series`` from ``btc.minute_aggregates`` (for block time: the trailing
    60-minute tx/min rate), from ``context_minutes`` before the cutoff to the last forecast minute,
    so the chart shows the history the model saw and any actuals that have arrived since.
    An empty forecast, or aggregates that cannot form the series, give an empty frame.
    """
    empty = pd.DataFrame({"ds": pd.Series(dtype="datetime64[us]"), "y": pd.Series(dtype=float),
                          "series": pd.Series(dtype=object), "time_basis": pd.Series(dtype=object)})
    if forecast.empty:
        return empty
    cutoff = pd.Timestamp(forecast["cutoff"].iloc[0])
    show_from = cutoff - pd.Timedelta(minutes=context_minutes)
    last = pd.Timestamp(forecast["ds"].max()) + pd.Timedelta(minutes=1)
    read_from = show_from - pd.Timedelta(minutes=BLOCK_RATE_WINDOW_MINUTES)
    aggregates = read_or_empty(
        wh,
        f"SELECT minute, tx_count, time_basis FROM {SCHEMA}.{MINUTE_AGGREGATES} WHERE minute >= ? AND minute < ? ORDER BY minute",
        [read_from.to_pydatetime(), last.to_pydatetime()],
        ["minute", "tx_count", "time_basis"],
    )
    if aggregates.empty:
        return empty
    # An empty minute has no time basis of its own; under the forecast's basis it means zero
    # transactions (a stretch without blocks is a rate of 0, not a gap in the series).
    aggregates["time_basis"] = aggregates["time_basis"].fillna(forecast["time_basis"].iloc[0])
    try:
        series = forecast_series(aggregates)
    except ForecastError:
        return empty  # e.g. no transactions in the range: nothing observed to draw
    return series[series["ds"] >= show_from].reset_index(drop=True)


EXCURSION_COLUMNS = ["minute", "cutoff", "step", "y", "yhat_lower", "yhat_upper", "direction", "severity"]


def forecast_excursions(wh: Reader, cutoff: datetime | None) -> pd.DataFrame:
    """Actuals outside the interval of the forecast made at ``cutoff`` (``btc.forecast_excursions``)."""
    if cutoff is None:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in EXCURSION_COLUMNS})
    columns = ", ".join(EXCURSION_COLUMNS)
    return read_or_empty(
        wh,
        f"SELECT {columns} FROM {SCHEMA}.{FORECAST_EXCURSIONS} WHERE cutoff = ? ORDER BY minute",
        [pd.Timestamp(cutoff).to_pydatetime()],
        EXCURSION_COLUMNS,
    )


# --------------------------------------------------------------------------------------------
# Explanation audit trail

# Display name <- accepted stored names (the explanation table's contract may still be settling).
EXPLANATION_FIELDS: dict[str, tuple[str, ...]] = {
    "minute": ("minute",),
    "kind": ("anomaly_kind", "kind"),
    "subject": ("subject", "metric", "pattern"),
    "severity": ("severity",),
    "source": ("source",),
    "status": ("status",),
    "flag_for_investigation": ("flag_for_investigation",),
    "confidence": ("confidence",),
    "statistically_unusual": ("statistically_unusual",),
    "insufficient_evidence": ("insufficient_evidence",),
    "suspected_patterns": ("suspected_patterns",),
    "legitimate_causes": ("legitimate_causes",),
    "summary": ("summary",),
    "unusual_reason": ("unusual_reason",),
    "flag_rationale": ("flag_rationale",),
    "narrative": ("narrative",),
    "error": ("error",),
    "model": ("model_id", "model"),
    "input_tokens": ("input_tokens",),
    "output_tokens": ("output_tokens",),
    "cost_usd": ("estimated_cost_usd", "cost_usd"),
    "written_at": ("written_at",),
    "anomaly_id": ("anomaly_id",),
}
EXPLANATION_DISPLAY_COLUMNS = list(EXPLANATION_FIELDS)
LIST_FIELDS = ("suspected_patterns", "legitimate_causes")
BOOL_FIELDS = ("flag_for_investigation", "statistically_unusual", "insufficient_evidence")


def is_null(value) -> bool:
    """NULL as DuckDB hands it to pandas: None, NaN, NaT or pd.NA (a list is never NULL)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return False
    return bool(pd.isna(value))


def text_list(value) -> str:
    """A stored list as "a, b"; NULL as ""."""
    if is_null(value):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value)
    return str(value)


def yes_no(value) -> str:
    """A stored boolean as "yes"/"no"; NULL (e.g. a failed explanation) as ""."""
    if is_null(value):
        return ""
    return "yes" if bool(value) else "no"


def read_explanations(
    wh: Reader, window: Window = Window(), limit: int | None = None, newest_first: bool = True
) -> pd.DataFrame:
    """Stored explanations in the window with the display names of ``EXPLANATION_FIELDS``, values as stored.

    A stored column missing from the table (an older contract) comes back as NULL, so callers can
    rely on every display column being present.
    """
    cond, params = window.where()
    order = "minute DESC, anomaly_id" if newest_first else "minute, anomaly_id"
    limit_sql = f" LIMIT {int(limit)}" if limit is not None else ""
    stored = read_or_empty(
        wh,
        f"SELECT * FROM {SCHEMA}.{ANOMALY_EXPLANATIONS} WHERE {cond} ORDER BY {order}{limit_sql}",
        params,
        ["minute", "anomaly_id"],
    )
    out = pd.DataFrame(index=stored.index)
    for name, candidates in EXPLANATION_FIELDS.items():
        found = next((c for c in candidates if c in stored.columns), None)
        out[name] = stored[found] if found else None
    return out.reset_index(drop=True)


def explanations(wh: Reader, window: Window = Window(), limit: int = 2000) -> pd.DataFrame:
    """The newest ``limit`` explanations in the window, ready to display (``EXPLANATION_DISPLAY_COLUMNS``).

    Lists are joined with ", ", booleans become "yes"/"no"/"" (NULL for a failed explanation),
    timestamps become ``YYYY-MM-DD HH:MM`` text so the table's native filter can match them.
    """
    out = read_explanations(wh, window, limit=limit)
    # A failed explanation has no summary: show why it failed in the summary column instead.
    failed = (out["status"] == "failed") & out["summary"].map(is_null)
    out.loc[failed, "summary"] = "explanation failed: " + out.loc[failed, "error"].map(text_list)
    for name in LIST_FIELDS:
        out[name] = out[name].map(text_list)
    for name in BOOL_FIELDS:
        out[name] = out[name].map(yes_no)
    for name, fmt in (("minute", "%Y-%m-%d %H:%M"), ("written_at", "%Y-%m-%d %H:%M:%S")):
        stamps = pd.to_datetime(out[name], errors="coerce")
        out[name] = stamps.dt.strftime(fmt).where(stamps.notna(), "")
    return out


def search_rows(frame: pd.DataFrame, text: str) -> pd.DataFrame:
    """Rows where any column contains ``text`` (case-insensitive); blank text keeps every row."""
    needle = (text or "").strip().lower()
    if not needle or frame.empty:
        return frame
    hay = frame.astype(str).apply(lambda col: col.str.lower().str.contains(needle, regex=False))
    return frame[hay.any(axis=1)]


# --------------------------------------------------------------------------------------------
# Incidents: the same rows the alerts are built from

INCIDENTS = "incidents"
INCIDENT_DISPLAY_COLUMNS = ["minute", "severity", "headline", "transaction", "explanation", "findings", "incident_id"]


def incidents(wh: Reader, window: Window = Window(), min_severity: str = "low", limit: int = 2000) -> pd.DataFrame:
    """Incidents in the window at or above ``min_severity``, newest first, ready to display
    (``INCIDENT_DISPLAY_COLUMNS``): the top transaction as a markdown link to the block explorer,
    the explanation's one-line summary, and how many findings the incident groups."""
    presence = table_presence(wh, (INCIDENTS, ANOMALY_EXPLANATIONS))
    if not presence[INCIDENTS]:
        return pd.DataFrame(columns=INCIDENT_DISPLAY_COLUMNS)
    cond, params = window.where()
    explained = (f"(SELECT anomaly_id, summary FROM {SCHEMA}.{ANOMALY_EXPLANATIONS} WHERE status = 'ok')"
                 if presence[ANOMALY_EXPLANATIONS] else "(SELECT NULL::VARCHAR AS anomaly_id, NULL::VARCHAR AS summary)")
    stored = wh.query(
        f"SELECT i.*, e.summary AS explanation FROM (SELECT * FROM {SCHEMA}.{INCIDENTS} WHERE {cond}) i "
        f"LEFT JOIN {explained} e ON e.anomaly_id = i.incident_id "
        f"WHERE i.severity IN {sql_in_list(_severity_list(min_severity))} ORDER BY i.minute DESC LIMIT {int(limit)}",
        params,
    )
    if stored.empty:
        return pd.DataFrame(columns=INCIDENT_DISPLAY_COLUMNS)
    spans = zip(pd.to_datetime(stored["minute"]), pd.to_datetime(stored["end_minute"]))
    return pd.DataFrame({
        "minute": [f"{m:%Y-%m-%d %H:%M}" + (f"-{e:%H:%M}" if e > m else "") for m, e in spans],
        "severity": stored["severity"],
        "headline": stored["headline"],
        "transaction": [f"[{h[:16]}…]({u})" if not is_null(h) else "" for h, u in zip(stored["top_tx_hash"], stored["top_tx_url"])],
        "explanation": stored["explanation"].map(lambda v: "" if is_null(v) else str(v)),
        "findings": stored["finding_count"].astype(int),
        "incident_id": stored["incident_id"],
    })
