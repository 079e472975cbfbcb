"""The dashboard's Incidents tab: the same incidents the alerts are built from, one row each."""

from __future__ import annotations

import warnings

from dash import dash_table, html

from btc_anomaly_assets.dashboard import queries as q
from btc_anomaly_assets.dashboard.style import FONT, SEVERITY_COLORS

TAB_INCIDENTS = "incidents"
TAB_LABEL = "Incidents"
COLUMNS = [("minute", "Minute (UTC)"), ("severity", "Severity"), ("headline", "What happened"),
           ("transaction", "Transaction"), ("explanation", "Explanation"), ("findings", "Findings"),
           ("incident_id", "Incident")]


def incidents_layout() -> html.Div:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        table = dash_table.DataTable(
            id="incidents-table",
            columns=[{"id": c, "name": name, **({"presentation": "markdown"} if c == "transaction" else {})}
                     for c, name in COLUMNS],
            data=[], page_size=15, sort_action="native", filter_action="native",
            filter_options={"case": "insensitive"},
            style_table={"overflowX": "auto"},
            style_cell={"fontFamily": FONT, "fontSize": "13px", "textAlign": "left", "padding": "6px 8px",
                        "whiteSpace": "normal", "height": "auto", "maxWidth": "460px"},
            style_header={"backgroundColor": "#eef2f6", "fontWeight": "600"},
            style_data_conditional=[{"if": {"filter_query": f'{{severity}} = "{s}"', "column_id": "severity"},
                                     "color": SEVERITY_COLORS[s], "fontWeight": "600"} for s in ("low", "medium", "high")],
        )
    return html.Div([
        html.Div(id="incidents-count", className="note"),
        html.Div(table, className="card"),
        html.P("An incident is one minute (or a short run of minutes of one phenomenon) with every finding that belongs "
               "to it; alerts and explanations are per incident. Transaction links open the block explorer "
               "(BTC_EXPLORER_URL).", className="note"),
    ], className="tab-body")


def incidents_view(wh: q.Reader, window: q.Window, min_severity: str) -> tuple[list[dict], str]:
    """(table rows, count line) for the incidents in the window at or above ``min_severity``."""
    if not q.table_presence(wh, (q.INCIDENTS,))[q.INCIDENTS]:
        return [], "btc.incidents is not materialized yet."
    rows = q.incidents(wh, window, min_severity)
    return rows.to_dict("records"), f"{len(rows)} incident(s) at {min_severity} or above in the window"
