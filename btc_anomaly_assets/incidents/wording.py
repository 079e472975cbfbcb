"""How an incident reads: amounts in BTC, fee rates in sat/vB, rates in tx/min; headlines in plain words.

Nothing here ever prints a missing value as "n/a" or a log10 value as an amount: a finding's
numbers are natural units already (``findings``), and a missing number leaves its phrase out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping


def btc(value: float) -> str:
    """19,609 BTC, 3,021 BTC, 28.51 BTC, 0.00050088 BTC."""
    if abs(value) >= 100:
        return f"{value:,.0f} BTC"
    if abs(value) >= 1:
        return f"{value:,.2f} BTC"
    text = f"{value:.8f}".rstrip("0").rstrip(".")
    return f"{text or '0'} BTC"


def quantity(value: float | None, unit: str) -> str:
    """A natural-unit figure with its unit ('' when the value is missing)."""
    if value is None:
        return ""
    if unit == "BTC":
        return btc(value)
    if unit == "USD":
        return f"${value:,.0f}"
    if unit == "sat/vB":
        return f"{value:,.1f} sat/vB" if value >= 1 else f"{value:,.2f} sat/vB"
    if unit == "tx/min":
        return f"{value:,.0f} tx/min"
    if unit == "tx":
        return f"{value:,.0f} transactions"
    if unit in ("inputs", "outputs"):
        return f"{value:,.1f} {unit}"
    return f"{value:,.4g} {unit}".strip()


def times(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:,.1f}x"


def _where(finding: Mapping[str, Any]) -> str:
    return "block" if finding.get("time_basis") == "block" else "minute"


def headline_for(primary: Mapping[str, Any], findings: list[Mapping[str, Any]], top_tx: Mapping[str, Any] | None,
                 first: datetime, last: datetime) -> str:
    """The phenomenon in plain words: "19,609 BTC moved in one transaction, 83x the usual largest". A run of
    minutes says how long it lasted ("over 3 minutes"); when it happened is the incident's ``minute`` ..
    ``end_minute``, which every message prints beside the headline (once)."""
    text = _headline(primary, top_tx)
    if last > first:
        text += f", over {int((last - first).total_seconds() // 60) + 1} minutes"
    return text


def _against(primary: Mapping[str, Any], what: str) -> str:
    ratio = primary.get("ratio")
    if ratio is None:
        return ""
    if ratio >= 1:
        return f", {times(ratio)} the usual {what}".rstrip()
    return f", {times(1 / ratio) if ratio > 0 else 'far'} below the usual {what}".rstrip()


def _headline(f: Mapping[str, Any], top_tx: Mapping[str, Any] | None) -> str:
    phenomenon, value, unit = f["phenomenon"], f.get("value"), f.get("unit")
    if phenomenon == "large_transfer":
        amount = top_tx["value_btc"] if top_tx else value
        return f"{btc(amount)} moved in one transaction" + _against(f, "largest")
    if phenomenon == "value_surge":
        where = "per block" if "per block" in f.get("label", "") else f"in one {_where(f)}"
        return f"{quantity(value, unit)} moved {where}" + _against(f, f"{f['label']}".removesuffix(" per block"))
    if phenomenon == "fee_spike":
        return f"{f['label'].capitalize()} {quantity(value, unit)}" + _against(f, quantity(f.get("baseline"), unit))
    if phenomenon == "fee_outliers":
        usual = f.get("baseline")
        tail = f", usually {usual:,.0f}" if usual is not None else ""
        return f"{value:,.0f} transactions paid 20x the median fee rate or more in one {_where(f)}{tail}"
    if phenomenon == "activity_surge":
        return f"{value:,.0f} transactions in one {_where(f)}" + _against(f, "count")
    if phenomenon == "rate_excursion":
        lower, upper = (f.get("interval") or [None, None])[:2]
        band = f" (forecast {lower:,.0f}-{upper:,.0f} tx/min)" if lower is not None and upper is not None else ""
        side = "above" if f.get("direction") != "below" else "below"
        return f"Transaction rate {quantity(value, 'tx/min')}, {side} its forecast{band}"
    if f["kind"] == "cluster":
        return _cluster_headline(f)
    return f"{f['label'].capitalize()} {quantity(value, unit)}" + _against(f, "level")


def _cluster_headline(f: Mapping[str, Any]) -> str:
    members, pattern = f.get("members") or 0, f["subject"]
    ins, outs, total = f.get("avg_inputs"), f.get("avg_outputs"), f.get("total_value_btc") or 0.0
    score = f" in one {_where(f)}" + (f", {times(f['ratio'])} the usual" if f.get("ratio") else "")
    if pattern == "similar_burst":
        shape = f"{ins:.0f} in, {outs:.0f} out" if ins is not None and outs is not None else "same shape"
        each = f", {btc(f['mean_value_btc'])} each" if f.get("mean_value_btc") is not None else ""
        return f"{members:,} identical transactions ({shape}{each}){score}"
    if pattern == "coinjoin":
        rounds = "CoinJoin round" if members == 1 else f"{members:,} CoinJoin rounds"
        shape = f", {ins:,.0f} inputs and {outs:,.0f} outputs" if ins is not None and outs is not None else ""
        return f"{rounds}{shape}, {btc(total)} mixed"
    if pattern == "dust_fanout":
        outputs = f" paying {outs:,.0f} dust outputs each" if outs is not None else " paying dust outputs"
        return f"{members:,} transaction(s){outputs}{score}"
    if pattern == "fan_in_consolidation":
        inputs = f" of {ins:,.0f} inputs on average" if ins is not None else ""
        return f"{members:,} consolidations{inputs}, {btc(total)}{score}"
    if pattern == "fan_out_batch":
        outputs = f" of {outs:,.0f} outputs on average" if outs is not None else ""
        return f"{members:,} batch payouts{outputs}, {btc(total)}{score}"
    return f"{members:,} {f['label']}, {btc(total)}{score}"


def finding_line(f: Mapping[str, Any]) -> str:
    """One evidence line: 'largest single transaction (`max_value_btc`): 19,609 BTC vs usual 236 BTC (83x, z 6.2), high'."""
    unit = f.get("unit") or ""
    value, baseline = quantity(f.get("value"), unit), quantity(f.get("baseline"), unit)
    if f["kind"] == "cluster":
        body = f"{f.get('members', 0):,} transactions"
        if f.get("baseline") is not None:
            body += f" vs {f['baseline']:,.1f} expected"
        if f.get("total_value_btc") is not None:
            body += f", {btc(f['total_value_btc'])} in all"
    elif f["kind"] == "forecast":
        lower, upper = (f.get("interval") or [None, None])[:2]
        body = value + (f" vs forecast {lower:,.0f}-{upper:,.0f} tx/min" if lower is not None and upper is not None else "")
    else:
        body = value + (f" vs usual {baseline}" if baseline else "")
    extras = [times(f.get("ratio"))] if f.get("ratio") is not None and f["kind"] != "forecast" else []
    if f.get("z") is not None:
        extras.append(f"z {f['z']:.1f}")
    severity = f["severity"] + (f" (detector: {f['detector_severity']})" if f["severity"] != f["detector_severity"] else "")
    extra = f" ({', '.join(extras)})" if extras else ""
    return f"{f['label']} (`{f['subject']}`) {hhmm(f.get('minute'))}: {body}{extra}, {severity}"


def hhmm(value: Any) -> str:
    """'00:18' from a datetime or the ISO text a finding carries in JSON."""
    if isinstance(value, datetime):
        return f"{value:%H:%M}"
    text = str(value or "")
    return text[11:16] if len(text) >= 16 else text
