"""The dashboard's page: tabs, controls and cards (Dash components, no data access)."""

from __future__ import annotations

import warnings

from dash import dash_table, dcc, html

from btc_anomaly_assets.common.schema import SEVERITIES
from btc_anomaly_assets.dashboard import queries as q
from btc_anomaly_assets.dashboard.style import (
    AUDIT_COLUMNS,
    DEFAULT_WINDOW_HOURS,
    FONT,
    SEVERITY_COLORS,
    TAB_LABELS,
    TAB_OVERVIEW,
    TAB_SELECTED_STYLE,
    TAB_STYLE,
    WINDOW_CHOICES,
)

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
