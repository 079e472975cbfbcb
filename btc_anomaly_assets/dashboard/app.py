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
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import dash
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, dash_table, dcc, html

from btc_anomaly_assets.common.schema import SEVERITIES
from btc_anomaly_assets.common.warehouse import Warehouse, WarehouseError
from btc_anomaly_assets.dashboard import queries as q
from btc_anomaly_assets.detection.config import (
    PATTERN_COINJOIN,
    PATTERN_DUST_FANOUT,
    PATTERN_FAN_IN,
    PATTERN_FAN_OUT,
    PATTERN_SEED,
    PATTERN_SIMILAR_BURST,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
DEFAULT_REFRESH_SECONDS = 30
# Short on purpose: a dashboard request must not queue for minutes behind a run's write.
DEFAULT_LOCK_TIMEOUT_SECONDS = 10

TAB_OVERVIEW, TAB_DETECTION, TAB_AUDIT = "overview", "detection", "audit"
TAB_LABELS = {
    TAB_OVERVIEW: "Overview",
    TAB_DETECTION: "Detection & Forecasting",
    TAB_AUDIT: "Explanation audit trail",
}
WINDOW_CHOICES = [("Last hour", 1), ("Last 3 hours", 3), ("Last 6 hours", 6), ("Last 24 hours", 24),
                  ("Last 7 days", 24 * 7), ("All data", None)]
DEFAULT_WINDOW_HOURS = 24

SEVERITY_COLORS = {"info": "#9aa5b1", "low": "#e0a800", "medium": "#e8590c", "high": "#b02a37"}
BASIS_NOTES = {
    "block": "Time basis: block time. A minute holds a whole block or nothing, so counts jump from 0 to "
             "thousands; the EWMA compares each block-minute with the previous block-minutes (per block).",
    "first_seen": "Time basis: first-seen (mempool arrival). Every minute is an observation; zero arrivals count.",
    "mixed": "The window mixes block-time and first-seen data; their minutes are not comparable.",
}
# One colour per cluster pattern, the same on every page and refresh.
PATTERN_COLORS = {PATTERN_COINJOIN: "#1f77b4", PATTERN_DUST_FANOUT: "#ff7f0e", PATTERN_FAN_IN: "#2ca02c",
                  PATTERN_FAN_OUT: "#9467bd", PATTERN_SIMILAR_BURST: "#d62728", PATTERN_SEED: "#8c564b"}
OTHER_PATTERN_COLORS = ["#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
AUDIT_COLUMNS = [
    ("minute", "Minute (UTC)"),
    ("kind", "Kind"),
    ("subject", "Metric / pattern"),
    ("severity", "Severity"),
    ("flag_for_investigation", "Flag"),
    ("confidence", "Confidence"),
    ("suspected_patterns", "Suspected patterns"),
    ("summary", "Summary"),
    ("source", "Source"),
    ("status", "Status"),
]

FONT = "-apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
CSS = """
body { margin: 0; background: #f4f6f8; color: #1f2933; font-family: """ + FONT + """; }
.page { max-width: 1360px; margin: 0 auto; padding: 14px 22px 28px; }
.header h1 { font-size: 22px; margin: 4px 0 2px; font-weight: 600; }
.status-line { font-size: 13px; color: #52606d; margin: 2px 0 8px; }
.chips span { display: inline-block; font-size: 12px; padding: 2px 8px; margin: 0 6px 4px 0;
              border-radius: 10px; }
.chip-ok { background: #e3f2e6; color: #1e5b2f; } .chip-missing { background: #fde8e8; color: #8a1c1c; }
.controls { display: flex; gap: 18px; align-items: flex-end; margin: 6px 0 10px; flex-wrap: wrap; }
.control label { display: block; font-size: 12px; color: #52606d; margin-bottom: 2px; }
.control { min-width: 200px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
.card { background: #fff; border: 1px solid #dde2e8; border-radius: 8px; padding: 8px 10px; }
.wide { grid-column: 1 / span 2; }
.note { font-size: 12.5px; color: #52606d; margin: 4px 4px 0; }
.detail { background: #fff; border: 1px solid #dde2e8; border-radius: 8px; padding: 10px 16px;
          margin-top: 12px; font-size: 13.5px; }
.detail h3 { font-size: 15px; margin: 4px 0 8px; }
.detail dt { font-weight: 600; color: #323f4b; margin-top: 6px; }
.detail dd { margin: 2px 0 0 0; white-space: pre-wrap; }
.tab-body { padding-top: 12px; }
"""

TAB_STYLE = {"padding": "9px 14px", "fontSize": "14px", "backgroundColor": "#e9edf2", "color": "#3e4c59"}
TAB_SELECTED_STYLE = {**TAB_STYLE, "backgroundColor": "#ffffff", "color": "#102a43", "fontWeight": "600",
                      "borderTop": "3px solid #1f77b4"}

INDEX_STRING = """<!DOCTYPE html>
<html>
<head>{%metas%}<title>{%title%}</title>{%favicon%}{%css%}<style>""" + CSS + """</style></head>
<body>{%app_entry%}<footer>{%config%}{%scripts%}{%renderer%}</footer></body>
</html>"""


# --------------------------------------------------------------------------------------------
# Figures (pure: frames in, figures out)


def _style(fig: go.Figure, title: str, *, height: int = 340, revision: str = "") -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        height=height,
        margin={"l": 60, "r": 20, "t": 56, "b": 44},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0, "font": {"size": 11}},
        hoverlabel={"font": {"size": 12}},
        font={"family": FONT, "size": 12},
        uirevision=revision or title,  # keeps the user's zoom across refreshes
    )
    return fig


def message_figure(title: str, message: str, *, height: int = 340) -> go.Figure:
    """An empty chart that says why it is empty (table not materialized, no rows, busy...)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 14, "color": "#7b8794"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _style(fig, title, height=height)


def _x_range(window: q.Window | None, minutes: pd.Series) -> list[pd.Timestamp]:
    """The window when it is bounded (so every tab shows the same span), else the data's span."""
    if window is not None and window.start is not None and window.end is not None:
        return [pd.Timestamp(window.start), pd.Timestamp(window.end)]
    return [minutes.min() - pd.Timedelta(minutes=1), minutes.max() + pd.Timedelta(minutes=1)]


def _minute_bar_width_ms(x_range: list[pd.Timestamp]) -> float:
    """One minute, widened on long spans to 1/400 of the axis so a lone block-minute stays visible.

    Plotly would otherwise size date bars by the smallest gap between bars (13 minutes between two
    blocks draws 13-minute-wide bars) or shrink one-minute bars on a day's axis to a hairline.
    """
    span_ms = (x_range[1] - x_range[0]) / pd.Timedelta(milliseconds=1)
    return max(60_000.0, span_ms / 400)


def tx_count_figure(series: pd.DataFrame, flagged: pd.DataFrame, basis: str | None, min_severity: str,
                    window: q.Window | None = None) -> go.Figure:
    """Transactions per minute (bars), the tx_count EWMA baseline, and minutes flagged on any metric."""
    title = "Transactions per minute, EWMA baseline and flagged minutes"
    if series.empty:
        return message_figure(title, "No tx_count rows in btc.ewma_anomalies for this window")
    minutes = pd.to_datetime(series["minute"])
    x_range = _x_range(window, minutes)
    fig = go.Figure()
    busy = series["tx_count"] > 0
    fig.add_bar(x=minutes[busy], y=series.loc[busy, "tx_count"], name="transactions in minute", marker_color="#9fb3c8",
                width=_minute_bar_width_ms(x_range),
                hovertemplate="%{x|%Y-%m-%d %H:%M}<br>%{y:,} transactions<extra></extra>")
    baseline_name = "EWMA baseline (per block)" if basis == "block" else "EWMA baseline"
    scored = series[series["baseline"].notna()]
    fig.add_scatter(x=pd.to_datetime(scored["minute"]), y=scored["baseline"], name=baseline_name, mode="lines+markers",
                    line={"color": "#243b53", "dash": "dash", "width": 1.6}, marker={"size": 4},
                    hovertemplate="%{x|%H:%M} baseline %{y:,.0f}<extra></extra>")
    counts = series.set_index(minutes)["tx_count"]
    for severity, symbol in (("medium", "circle"), ("high", "diamond")):
        rows = flagged[flagged["severity"] == severity] if not flagged.empty else flagged
        if rows.empty or SEVERITIES.index(severity) < SEVERITIES.index(min_severity):
            continue
        at = pd.to_datetime(rows["minute"])
        fig.add_scatter(x=at, y=counts.reindex(at).to_numpy(), mode="markers", name=f"flagged: {severity}",
                        marker={"color": SEVERITY_COLORS[severity], "size": 12, "symbol": symbol,
                                "line": {"color": "white", "width": 1}},
                        customdata=rows["metrics"], hovertemplate="%{x|%Y-%m-%d %H:%M}<br>%{customdata}<extra></extra>")
    fig.update_yaxes(title_text="transactions", rangemode="tozero")
    fig.update_xaxes(range=x_range)
    return _style(fig, title, height=380)


def zscore_heatmap_figure(cells: pd.DataFrame, metric: str) -> go.Figure:
    title = f"Mean z-score of {metric} by date and hour (UTC)"
    if cells.empty:
        return message_figure(title, "No scored minutes for this metric in the window")
    dates = sorted(cells["date"].astype(str).unique())
    grid = cells.assign(date=cells["date"].astype(str)).pivot(index="date", columns="hour", values="mean_z")
    grid = grid.reindex(index=dates, columns=range(24))
    minutes = cells.assign(date=cells["date"].astype(str)).pivot(index="date", columns="hour", values="minutes")
    minutes = minutes.reindex(index=dates, columns=range(24))
    # Colour range: at least +/-3, at most +/-8 (the high threshold), so one warm-up outlier does
    # not wash out every other cell; the hover still shows the true mean.
    limit = min(max(3.0, float(cells["mean_z"].abs().max())), 8.0)
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=[f"{h:02d}" for h in range(24)], y=dates, customdata=minutes.to_numpy(),
        colorscale="RdBu", reversescale=True, zmid=0, zmin=-limit, zmax=limit, xgap=1, ygap=1,
        colorbar={"title": {"text": "mean z"}, "thickness": 12},
        hovertemplate="%{y} %{x}:00 UTC<br>mean z %{z:.2f} over %{customdata} minutes<extra></extra>",
    ))
    fig.update_xaxes(title_text="hour (UTC)", type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return _style(fig, title, height=max(240, 120 + 28 * len(dates)))


def anomalies_by_hour_figure(counts: pd.DataFrame, min_severity: str) -> go.Figure:
    title = f"Anomalous minutes by hour of day (severity {min_severity}+)"
    if counts.empty:
        return message_figure(title, f"No minute at {min_severity} or above in this window")
    fig = go.Figure()
    for severity in SEVERITIES:
        rows = counts[counts["severity"] == severity]
        if rows.empty:
            continue
        fig.add_bar(x=rows["hour"], y=rows["minutes"], name=severity, marker_color=SEVERITY_COLORS[severity],
                    hovertemplate="%{x}:00 UTC: %{y} minutes<extra>" + severity + "</extra>")
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text="hour (UTC)", range=[-0.5, 23.5], dtick=2)
    most = int(counts.groupby("hour")["minutes"].sum().max())
    fig.update_yaxes(title_text="minutes", rangemode="tozero", dtick=max(1, -(-most // 6)))  # whole minutes
    return _style(fig, title)


def anomaly_share_figure(share: pd.DataFrame, min_severity: str) -> go.Figure:
    title = "Anomalous vs normal minutes"
    counts = dict(zip(share["status"], share["minutes"]))
    scored = counts.get("anomalous", 0) + counts.get("normal", 0)
    if scored == 0:
        return message_figure(title, "No scored minute in this window")
    fig = go.Figure(go.Pie(
        labels=[f"anomalous ({min_severity}+)", "normal"], values=[counts.get("anomalous", 0), counts.get("normal", 0)],
        hole=0.55, sort=False, marker={"colors": [SEVERITY_COLORS["high"], "#7fb3d5"]},
        textinfo="label+percent", hovertemplate="%{label}: %{value} minutes<extra></extra>",
    ))
    fig.add_annotation(text=f"{scored:,}<br>scored<br>minutes", x=0.5, y=0.5, showarrow=False, font={"size": 13})
    not_scored = counts.get("not scored", 0)
    if not_scored:
        fig.add_annotation(text=f"{not_scored:,} minutes not scored (no data, e.g. no block landed) are left out",
                           x=0.5, y=-0.12, xref="paper", yref="paper", showarrow=False,
                           font={"size": 11, "color": "#7b8794"})
    fig.update_layout(showlegend=False)
    return _style(fig, title)


def clusters_figure(clusters: pd.DataFrame, min_severity: str, window: q.Window | None = None) -> go.Figure:
    title = f"Coordinated clusters over time by pattern (severity {min_severity}+)"
    if clusters.empty:
        return message_figure(title, f"No cluster at {min_severity} or above in this window")
    x_range = _x_range(window, pd.to_datetime(clusters["minute"]))
    fig = go.Figure()
    for i, (pattern, rows) in enumerate(clusters.groupby("pattern", sort=True)):
        colour = PATTERN_COLORS.get(pattern, OTHER_PATTERN_COLORS[i % len(OTHER_PATTERN_COLORS)])
        fig.add_bar(
            x=pd.to_datetime(rows["minute"]), y=rows["members"], name=pattern,
            marker_color=colour, width=_minute_bar_width_ms(x_range),
            customdata=rows[["clusters", "severity"]].to_numpy(),
            hovertemplate="%{x|%Y-%m-%d %H:%M}<br>" + pattern
            + ": %{y:,} transactions in %{customdata[0]} cluster(s), up to %{customdata[1]}<extra></extra>",
        )
    fig.update_layout(barmode="stack")
    fig.update_xaxes(range=x_range)
    fig.update_yaxes(title_text="member transactions", rangemode="tozero")
    return _style(fig, title, height=380)


FORECAST_TITLE = "Transaction-rate forecast with its interval, against actuals"


def forecast_figure(forecast: pd.DataFrame, actuals: pd.DataFrame, excursions: pd.DataFrame) -> go.Figure:
    title = FORECAST_TITLE
    if forecast.empty:
        return message_figure(title, "No forecast in this window", height=400)
    series = str(forecast["series"].iloc[0])
    cutoff = pd.Timestamp(forecast["cutoff"].iloc[0])
    ds = pd.to_datetime(forecast["ds"])
    fig = go.Figure()
    fig.add_scatter(x=ds, y=forecast["yhat_upper"], mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip")
    fig.add_scatter(x=ds, y=forecast["yhat_lower"], mode="lines", line={"width": 0}, fill="tonexty",
                    fillcolor="rgba(31, 119, 180, 0.18)", name="95 % interval", hoverinfo="skip")
    fig.add_scatter(x=ds, y=forecast["yhat"], mode="lines", name="forecast", line={"color": "#1f77b4", "dash": "dash"},
                    customdata=forecast[["yhat_lower", "yhat_upper"]].to_numpy(),
                    hovertemplate="%{x|%H:%M} forecast %{y:,.1f} [%{customdata[0]:,.1f}, %{customdata[1]:,.1f}]<extra></extra>")
    if not actuals.empty:
        fig.add_scatter(x=pd.to_datetime(actuals["ds"]), y=actuals["y"], mode="lines", name="actual",
                        line={"color": "#243b53", "width": 2},
                        hovertemplate="%{x|%Y-%m-%d %H:%M} actual %{y:,.1f}<extra></extra>")
    if not excursions.empty:
        fig.add_scatter(x=pd.to_datetime(excursions["minute"]), y=excursions["y"], mode="markers", name="outside interval",
                        marker={"color": [SEVERITY_COLORS.get(s, "#b02a37") for s in excursions["severity"]], "size": 10},
                        hovertemplate="%{x|%H:%M} actual %{y:,.1f} outside the interval<extra></extra>")
    fig.add_vline(x=cutoff, line={"color": "#7b8794", "dash": "dot", "width": 1})
    fig.add_annotation(x=cutoff, y=0.02, yref="paper", text=f" forecast from {cutoff:%H:%M} →", showarrow=False,
                       xanchor="left", yanchor="bottom", font={"size": 11, "color": "#52606d"})
    unit = "transactions per minute"
    if series.startswith("tx_per_minute_trailing"):
        unit = "tx/min, trailing 60-minute rate"
    fig.update_yaxes(title_text=unit, rangemode="tozero")
    return _style(fig, f"{title}<br><sup>{series} · {forecast['model'].iloc[0]}</sup>", height=420, revision=title)


# --------------------------------------------------------------------------------------------
# Layout


def _chips(presence: dict[str, bool]) -> list:
    chips = []
    for table, present in presence.items():
        text = f"btc.{table}" if present else f"btc.{table}: not materialized yet"
        chips.append(html.Span(("✓ " if present else "") + text, className="chip-ok" if present else "chip-missing"))
    return chips


def _dropdown(id_: str, options: list[tuple[str, object]], value, label: str, width: int = 200) -> html.Div:
    return html.Div(
        [html.Label(label, htmlFor=id_),
         dcc.Dropdown(id=id_, options=[{"label": text, "value": "all" if v is None else v} for text, v in options],
                      value=value, clearable=False)],
        className="control", style={"width": f"{width}px"},
    )


def _graph(id_: str, wide: bool = False) -> html.Div:
    return html.Div(dcc.Graph(id=id_, config={"displaylogo": False}), className="card wide" if wide else "card")


def overview_layout() -> html.Div:
    return html.Div([
        html.Div([
            html.Div([dcc.Graph(id="tx-count-chart", config={"displaylogo": False}),
                      html.P(id="basis-note", className="note")], className="card wide"),
            html.Div([
                html.Div(_dropdown("heatmap-metric", [("tx_count", "tx_count")], "tx_count", "Heatmap metric", 260),
                         className="controls"),
                dcc.Graph(id="zscore-heatmap", config={"displaylogo": False}),
            ], className="card wide"),
            _graph("anomalies-by-hour"),
            _graph("anomaly-share"),
        ], className="grid"),
    ], className="tab-body")


def detection_layout() -> html.Div:
    severities = [(s, s) for s in SEVERITIES]
    return html.Div([
        html.Div([
            html.Div([
                html.Div(_dropdown("cluster-severity", severities, "low", "Cluster severity at least"), className="controls"),
                dcc.Graph(id="clusters-chart", config={"displaylogo": False}),
                html.P("info clusters are the ordinary batch payouts and consolidations every block holds; "
                       "low and above are unusual against the pattern's own baseline or labelled (CoinJoin, dust).",
                       className="note"),
            ], className="card wide"),
            html.Div([dcc.Graph(id="forecast-chart", config={"displaylogo": False}),
                      html.P(id="forecast-note", className="note")], className="card wide"),
        ], className="grid"),
    ], className="tab-body")


def audit_layout() -> html.Div:
    with warnings.catch_warnings():
        # Dash 4 announces DataTable's move out of the core package; it is still the core table here.
        warnings.simplefilter("ignore", DeprecationWarning)
        table = dash_table.DataTable(
            id="explanations-table",
            columns=[{"id": c, "name": name} for c, name in AUDIT_COLUMNS],
            data=[],
            page_size=10,
            filter_action="native",
            sort_action="native",
            sort_mode="multi",
            filter_options={"case": "insensitive"},
            style_table={"overflowX": "auto"},
            style_cell={"fontFamily": FONT, "fontSize": "13px", "textAlign": "left", "padding": "6px 8px",
                        "whiteSpace": "normal", "height": "auto", "maxWidth": "420px", "minWidth": "70px"},
            style_header={"backgroundColor": "#eef2f6", "fontWeight": "600", "border": "1px solid #dde2e8"},
            style_data={"border": "1px solid #e6e9ee"},
            style_filter={"backgroundColor": "#fbfcfd"},
            style_cell_conditional=[{"if": {"column_id": "summary"}, "minWidth": "380px"},
                                    {"if": {"column_id": "minute"}, "minWidth": "130px"}],
            style_data_conditional=[
                *({"if": {"filter_query": f'{{severity}} = "{s}"', "column_id": "severity"},
                   "color": SEVERITY_COLORS[s], "fontWeight": "600"} for s in ("medium", "high")),
                {"if": {"filter_query": '{flag_for_investigation} = "yes"', "column_id": "flag_for_investigation"},
                 "color": SEVERITY_COLORS["high"], "fontWeight": "600"},
                {"if": {"filter_query": '{status} = "failed"'}, "backgroundColor": "#fff4e5"},
                {"if": {"state": "active"}, "backgroundColor": "#e8f1fb", "border": "1px solid #7fb3d5"},
            ],
        )
    return html.Div([
        html.Div([
            html.Div([html.Label("Search all fields", htmlFor="explanation-search"),
                      dcc.Input(id="explanation-search", type="search", debounce=True,
                                placeholder="e.g. coinjoin, flag, 02:19, claude", style={"width": "340px", "padding": "6px"})],
                     className="control"),
            html.Div(id="explanations-count", className="note"),
        ], className="controls"),
        html.Div(table, className="card"),
        html.P("Type in a column's filter cell to filter it (e.g. high, yes, >= 2025-08-13 02:00); click a header to sort. "
               "Click a row to read the whole explanation.", className="note"),
        html.Div(id="explanation-detail", className="detail", children=html.P("No row selected.", className="note")),
    ], className="tab-body")


def page_layout(refresh_seconds: int) -> html.Div:
    return html.Div([
        dcc.Location(id="url", refresh=False),
        dcc.Interval(id="refresh", interval=refresh_seconds * 1000, n_intervals=0),
        html.Div([
            html.H1("Bitcoin transaction anomalies"),
            html.Div(id="status-line", className="status-line"),
            html.Div(id="table-chips", className="chips"),
        ], className="header"),
        html.Div([
            _dropdown("window-hours", WINDOW_CHOICES, DEFAULT_WINDOW_HOURS, "Window (to the newest minute)"),
            _dropdown("anomaly-severity", [(s, s) for s in ("low", "medium", "high")], q.DEFAULT_FLAG_SEVERITY,
                      "Anomaly severity at least"),
        ], className="controls"),
        dcc.Tabs(id="tabs", value=TAB_OVERVIEW,
                 children=[dcc.Tab(label=label, value=value, style=TAB_STYLE, selected_style=TAB_SELECTED_STYLE)
                           for value, label in TAB_LABELS.items()]),
        html.Div(id="tab-content"),
    ], className="page")


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
        return {TAB_DETECTION: detection_layout, TAB_AUDIT: audit_layout}.get(tab, overview_layout)()

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
