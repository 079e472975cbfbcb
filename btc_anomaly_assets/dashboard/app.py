"""The analyst's dashboard: a Dash app that reads the DuckDB warehouse live.

Three tabs, as in the tutorial's dashboard:

- **Overview**: transactions per minute with the EWMA baseline and the flagged minutes, a z-score
  heatmap by date x hour, anomalous minutes by hour of day, and the anomalous vs normal share.
- **Detection & Forecasting**: coordinated clusters over time by pattern, and the newest forecast
  with its interval against the actuals of the same series.
- **Explanation audit trail**: every stored explanation with its structured fields, searchable,
  filterable and sortable, with the full text of the selected row.

Unlike the tutorial (CSV files loaded once at import, ``debug=True``), every chart is queried from
DuckDB when it is drawn and again on each ``dcc.Interval`` tick, so the page follows the Dagster
runs; debug is off. Each query takes a short connection under the warehouse's file lock; when a
run holds the lock for longer than ``lock_timeout`` the charts say so and try again at the next
tick. The dashboard never creates the DuckDB file: before the first run it says there is none.

A link can open a tab and a window directly: ``?tab=overview|detection|audit&window=1|3|6|24|168|all``.
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import dash
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, html

from btc_anomaly_assets.common.warehouse import Warehouse, WarehouseError
from btc_anomaly_assets.dashboard import queries as q
from btc_anomaly_assets.dashboard.figures import (
    FORECAST_TITLE,
    anomalies_by_hour_figure,
    anomaly_share_figure,
    clusters_figure,
    forecast_figure,
    message_figure,
    tx_count_figure,
    zscore_heatmap_figure,
)
from btc_anomaly_assets.dashboard.incidents_view import TAB_INCIDENTS, incidents_layout, incidents_view
from btc_anomaly_assets.dashboard.layout import _chips, audit_layout, detection_layout, overview_layout, page_layout
from btc_anomaly_assets.dashboard.style import (
    BASIS_NOTES,
    DEFAULT_WINDOW_HOURS,
    INDEX_STRING,
    TAB_AUDIT,
    TAB_DETECTION,
    TAB_LABELS,
    TAB_OVERVIEW,
    WINDOW_CHOICES,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
DEFAULT_REFRESH_SECONDS = 30
# Short on purpose: a dashboard request must not queue for minutes behind a run's write.
DEFAULT_LOCK_TIMEOUT_SECONDS = 10


# --------------------------------------------------------------------------------------------
# App


def view_from_query(search: str | None) -> tuple[str, object]:
    """Tab and window from a link's query string, e.g. ``?tab=audit&window=all`` or ``&window=6``."""
    params = dict(part.split("=", 1) for part in (search or "").lstrip("?").split("&") if "=" in part)
    tab = params.get("tab") if params.get("tab") in TAB_LABELS else TAB_OVERVIEW
    allowed = {"all" if hours is None else str(hours): hours for _, hours in WINDOW_CHOICES}
    window = params.get("window")
    hours = ("all" if allowed[window] is None else allowed[window]) if window in allowed else DEFAULT_WINDOW_HOURS
    return tab, hours


def window_for(wh: q.Reader, hours) -> q.Window:
    """The dropdown's choice (hours, or "all"/None) as a window ending at the newest stored minute."""
    first, latest = q.data_extent(wh)
    return q.trailing_window(latest, None if hours in (None, "all") else float(hours), first)


# One function per callback: the warehouse and the controls in, what the page shows out. Each runs
# its queries afresh (short connections), so every refresh reflects what runs have written.

OVERVIEW_TITLES = ("Transactions per minute, EWMA baseline and flagged minutes",
                   "Anomalous minutes by hour of day", "Anomalous vs normal minutes")


def status_view(wh: q.Reader, hours, path: Path, refresh_seconds: int) -> tuple[str, list]:
    """The header's status line and the table chips."""
    now = datetime.now(timezone.utc).strftime("%H:%M:%S")
    presence = q.table_presence(wh)
    first, last = q.data_extent(wh)
    window = q.trailing_window(last, None if hours in (None, "all") else float(hours), first)
    basis = q.time_basis(wh, window)
    span = f"data {first:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M} UTC" if last else "no minutes stored yet"
    shown = f"showing {window.start:%Y-%m-%d %H:%M} → {window.end:%Y-%m-%d %H:%M}" if window.start else "showing all data"
    text = (f"Warehouse {path} · {span} · {shown} · time basis {basis or 'n/a'} · "
            f"refreshed {now} UTC (every {refresh_seconds} s)")
    return text, _chips(presence)


def overview_view(wh: q.Reader, hours, min_severity: str) -> tuple:
    """Overview tab: (tx chart, by-hour bars, share donut, time-basis note, heatmap metric options)."""
    if not q.table_presence(wh)[q.EWMA_ANOMALIES]:
        return (*(message_figure(t, "btc.ewma_anomalies is not materialized yet") for t in OVERVIEW_TITLES),
                "", dash.no_update)
    window = window_for(wh, hours)
    mode = q.preferred_mode(q.detection_modes(wh))
    basis = q.time_basis(wh, window)
    metrics = q.ewma_metrics(wh, mode) or ["tx_count"]
    note = BASIS_NOTES.get(basis or "", "") + (f" Detection mode: {mode}." if mode else "")
    return (
        tx_count_figure(q.ewma_series(wh, "tx_count", window, mode), q.flagged_minutes(wh, window, min_severity, mode),
                        basis, min_severity, window),
        anomalies_by_hour_figure(q.anomalies_by_hour(wh, window, min_severity, mode), min_severity),
        anomaly_share_figure(q.anomaly_share(wh, window, min_severity, mode), min_severity),
        note,
        [{"label": m, "value": m} for m in metrics],
    )


def heatmap_view(wh: q.Reader, hours, metric: str) -> go.Figure:
    if not q.table_presence(wh)[q.EWMA_ANOMALIES]:
        return message_figure(f"Mean z-score of {metric} by date and hour (UTC)", "btc.ewma_anomalies is not materialized yet")
    mode = q.preferred_mode(q.detection_modes(wh))
    return zscore_heatmap_figure(q.zscore_by_date_hour(wh, metric, window_for(wh, hours), mode), metric)


def clusters_view(wh: q.Reader, hours, min_severity: str) -> go.Figure:
    if not q.table_presence(wh)[q.COORDINATED_CLUSTERS]:
        return message_figure("Coordinated clusters over time by pattern", "btc.coordinated_clusters is not materialized yet")
    mode = q.preferred_mode(q.detection_modes(wh, q.COORDINATED_CLUSTERS))
    window = window_for(wh, hours)
    return clusters_figure(q.clusters_over_time(wh, window, min_severity, mode), min_severity, window)


def forecast_view(wh: q.Reader, hours) -> tuple[go.Figure, str]:
    """Detection tab: the newest forecast in the window against its actuals, and a note saying what it is."""
    if not q.table_presence(wh)[q.TRANSACTION_FORECAST]:
        return message_figure(FORECAST_TITLE, "btc.transaction_forecast is not materialized yet", height=400), ""
    fc = q.latest_forecast(wh, window_for(wh, hours))
    actuals = q.forecast_actuals(wh, fc)
    excursions = q.forecast_excursions(wh, fc["cutoff"].iloc[0] if len(fc) else None)
    note = ""
    if len(fc):
        cutoff = pd.Timestamp(fc["cutoff"].iloc[0])
        observed = int((pd.to_datetime(actuals["ds"]) >= cutoff).sum())
        note = (f"Forecast made at {cutoff:%Y-%m-%d %H:%M} UTC from {int(fc['history_points'].iloc[0])} points; "
                f"{observed} of its {len(fc)} minutes have actuals so far, {len(excursions)} fell outside the interval.")
        if str(fc["series"].iloc[0]).startswith("tx_per_minute_trailing"):
            note += (" Under block time the series is the trailing 60-minute rate (transactions per minute), "
                     "not raw minute counts, which are 0 in most minutes.")
    return forecast_figure(fc, actuals, excursions), note


def explanation_rows_view(wh: q.Reader, hours, search: str | None) -> tuple[list[dict], str]:
    """Audit tab: the table rows (after the free-text search) and the count line."""
    if not q.table_presence(wh)[q.ANOMALY_EXPLANATIONS]:
        return [], "btc.anomaly_explanations is not materialized yet."
    rows = q.explanations(wh, window_for(wh, hours))
    shown = q.search_rows(rows, search)
    flagged = int((shown["flag_for_investigation"] == "yes").sum())
    return shown.to_dict("records"), f"{len(shown)} of {len(rows)} explanations in the window · {flagged} flagged for investigation"


# --------------------------------------------------------------------------------------------
# App


class _Reader:
    """Opens the warehouse for one callback, or says why it cannot (no file yet, lock busy)."""

    def __init__(self, duckdb_path: str, lock_timeout: float):
        self.path = Path(duckdb_path).expanduser().resolve()
        self.lock_timeout = lock_timeout

    def warehouse(self) -> Warehouse | None:
        # Connecting would create an empty file: check first, so the dashboard never writes one.
        if not self.path.is_file():
            return None
        return Warehouse(str(self.path), lock_timeout=self.lock_timeout)

    def missing_message(self) -> str:
        return f"No warehouse at {self.path} yet: run btc-anomaly demo or a backfill"

    def run(self, view: Callable[[q.Reader], object], fallback: Callable[[str], object]) -> object:
        """``view(warehouse)``, or ``fallback(message)`` when the file is missing or a run holds the lock."""
        wh = self.warehouse()
        if wh is None:
            return fallback(self.missing_message())
        try:
            with q.reading(wh) as session:
                return view(session)
        except WarehouseError as exc:
            log.warning("dashboard refresh skipped: %s", exc)
            return fallback("Warehouse busy (a run holds the lock); retrying at the next refresh")


def create_app(
    duckdb_path: str | Path,
    *,
    refresh_seconds: int = DEFAULT_REFRESH_SECONDS,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
) -> dash.Dash:
    """The dashboard over the DuckDB file at ``duckdb_path`` (read on every refresh, never created)."""
    if refresh_seconds < 1:
        raise ValueError(f"refresh_seconds must be >= 1, got {refresh_seconds}")
    reader = _Reader(str(duckdb_path), lock_timeout)
    app = dash.Dash(__name__, title="BTC anomalies", suppress_callback_exceptions=True, update_title=None)
    app.index_string = INDEX_STRING
    app.layout = page_layout(refresh_seconds)

    @app.callback(Output("tabs", "value"), Output("window-hours", "value"), Input("url", "search"))
    def from_url(search):
        return view_from_query(search)

    @app.callback(Output("tab-content", "children"), Input("tabs", "value"))
    def render_tab(tab):
        return {TAB_DETECTION: detection_layout, TAB_AUDIT: audit_layout, TAB_INCIDENTS: incidents_layout}.get(
            tab, overview_layout)()

    @app.callback(Output("status-line", "children"), Output("table-chips", "children"),
                  Input("refresh", "n_intervals"), Input("window-hours", "value"))
    def status(_tick, hours):
        return reader.run(lambda wh: status_view(wh, hours, reader.path, refresh_seconds),
                          lambda message: (message, []))

    @app.callback(
        Output("tx-count-chart", "figure"), Output("anomalies-by-hour", "figure"), Output("anomaly-share", "figure"),
        Output("basis-note", "children"), Output("heatmap-metric", "options"),
        Input("refresh", "n_intervals"), Input("window-hours", "value"), Input("anomaly-severity", "value"),
    )
    def overview(_tick, hours, min_severity):
        return reader.run(lambda wh: overview_view(wh, hours, min_severity),
                          lambda message: (*(message_figure(t, message) for t in OVERVIEW_TITLES), "", dash.no_update))

    @app.callback(Output("zscore-heatmap", "figure"),
                  Input("refresh", "n_intervals"), Input("window-hours", "value"), Input("heatmap-metric", "value"))
    def heatmap(_tick, hours, metric):
        return reader.run(lambda wh: heatmap_view(wh, hours, metric),
                          lambda message: message_figure(f"Mean z-score of {metric} by date and hour (UTC)", message))

    @app.callback(Output("clusters-chart", "figure"),
                  Input("refresh", "n_intervals"), Input("window-hours", "value"), Input("cluster-severity", "value"))
    def clusters(_tick, hours, min_severity):
        return reader.run(lambda wh: clusters_view(wh, hours, min_severity),
                          lambda message: message_figure("Coordinated clusters over time by pattern", message))

    @app.callback(Output("forecast-chart", "figure"), Output("forecast-note", "children"),
                  Input("refresh", "n_intervals"), Input("window-hours", "value"))
    def forecast(_tick, hours):
        return reader.run(lambda wh: forecast_view(wh, hours),
                          lambda message: (message_figure(FORECAST_TITLE, message, height=400), ""))

    @app.callback(Output("incidents-table", "data"), Output("incidents-count", "children"),
                  Input("refresh", "n_intervals"), Input("window-hours", "value"), Input("anomaly-severity", "value"))
    def incident_rows(_tick, hours, min_severity):
        return reader.run(lambda wh: incidents_view(wh, window_for(wh, hours), min_severity),
                          lambda message: (dash.no_update if reader.path.is_file() else [], message))

    @app.callback(Output("explanations-table", "data"), Output("explanations-count", "children"),
                  Input("refresh", "n_intervals"), Input("window-hours", "value"), Input("explanation-search", "value"))
    def explanation_rows(_tick, hours, search):
        # On a busy lock keep the rows on screen (the user may be reading them) and say so.
        return reader.run(lambda wh: explanation_rows_view(wh, hours, search),
                          lambda message: (dash.no_update if reader.path.is_file() else [], message))

    @app.callback(Output("explanation-detail", "children"),
                  Input("explanations-table", "active_cell"), State("explanations-table", "derived_viewport_data"))
    def explanation_detail(active, viewport):
        if not active or not viewport or active.get("row") is None or active["row"] >= len(viewport):
            return html.P("No row selected: click a row to read the whole explanation.", className="note")
        return explanation_detail_view(viewport[active["row"]])

    return app


def explanation_detail_view(row: dict) -> list:
    """The full explanation of one table row (display fields of ``queries.explanations``)."""
    fields = [
        ("Summary", row.get("summary")),
        ("Narrative", row.get("narrative")),
        ("1. Statistically unusual", _joined(row.get("statistically_unusual"), row.get("unusual_reason"))),
        ("2. Suspected patterns", row.get("suspected_patterns")),
        ("3. Legitimate causes", row.get("legitimate_causes")),
        ("4. Flag for investigation", _joined(row.get("flag_for_investigation"), row.get("flag_rationale"))),
        ("Confidence", _joined(row.get("confidence"), f"insufficient evidence: {row.get('insufficient_evidence') or 'n/a'}",
                               sep=" · ")),
        ("Error", row.get("error")),
        ("Model", f"{row.get('source') or '?'}: {row.get('model') or '?'} · {row.get('input_tokens') or 0} in / "
                  f"{row.get('output_tokens') or 0} out tokens · cost "
                  + (f"${row['cost_usd']:.4f}" if isinstance(row.get("cost_usd"), (int, float)) else "n/a")),
        ("Written at / anomaly id", f"{row.get('written_at') or ''} UTC · {row.get('anomaly_id') or ''}"),
    ]
    items = []
    for label, value in fields:
        if value in (None, ""):
            continue
        items += [html.Dt(label), html.Dd(str(value))]
    head = f"{row.get('minute')} UTC · {row.get('kind')} · {row.get('subject')} · severity {row.get('severity')} · {row.get('status')}"
    return [html.H3(head), html.Dl(items)]


def _joined(*parts, sep: str = " — ") -> str:
    return sep.join(str(p) for p in parts if p not in (None, ""))


def serve(
    duckdb_path: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    refresh_seconds: int = DEFAULT_REFRESH_SECONDS,
) -> None:
    """Serve the dashboard until interrupted (debug off; loopback by default)."""
    app = create_app(duckdb_path, refresh_seconds=refresh_seconds)
    print(f"Dashboard on http://{host}:{port}/ reading {Path(duckdb_path).expanduser().resolve()} "
          f"(refresh every {refresh_seconds} s; Ctrl+C to stop)")
    app.run(host=host, port=int(port), debug=False)


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dashboard`` sub-command's options."""
    parser.add_argument("--duckdb", default=None,
                        help="DuckDB warehouse (default: BTC_DUCKDB_PATH or <BTC_DATA_DIR>/warehouse.duckdb)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--refresh-seconds", type=int, default=DEFAULT_REFRESH_SECONDS,
                        help=f"how often the open page re-queries DuckDB (default {DEFAULT_REFRESH_SECONDS})")


def run_dashboard(args: argparse.Namespace) -> int:
    """Serve with parsed ``add_dashboard_arguments`` options (blocks until interrupted)."""
    from btc_anomaly_assets.common import settings

    serve(args.duckdb or settings.duckdb_path(), args.host, args.port, refresh_seconds=args.refresh_seconds)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m btc_anomaly_assets.dashboard.app [--duckdb PATH] [--host H] [--port P]``."""
    parser = argparse.ArgumentParser(prog="btc-anomaly-dashboard", description="Serve the analyst's dashboard.")
    add_dashboard_arguments(parser)
    return run_dashboard(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
