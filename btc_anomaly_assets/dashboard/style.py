"""The dashboard's look: tabs, windows, colours per severity and pattern, CSS."""

from __future__ import annotations

from btc_anomaly_assets.detection.config import (
    PATTERN_COINJOIN,
    PATTERN_DUST_FANOUT,
    PATTERN_FAN_IN,
    PATTERN_FAN_OUT,
    PATTERN_SEED,
    PATTERN_SIMILAR_BURST,
)

TAB_OVERVIEW, TAB_DETECTION, TAB_AUDIT = "overview", "detection", "audit"
TAB_LABELS = {
    TAB_OVERVIEW: "Overview",
    "incidents": "Incidents",
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
