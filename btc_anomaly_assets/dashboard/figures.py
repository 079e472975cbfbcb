"""The dashboard's charts (pure: frames in, Plotly figures out)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from btc_anomaly_assets.common.schema import SEVERITIES
from btc_anomaly_assets.dashboard import queries as q
from btc_anomaly_assets.dashboard.style import FONT, OTHER_PATTERN_COLORS, PATTERN_COLORS, SEVERITY_COLORS

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
