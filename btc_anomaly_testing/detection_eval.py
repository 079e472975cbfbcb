"""The detection evaluation: events injected into the real blocks, v1 and v2 scored in one run.

A *case* is one event (``events.EVENTS``: kind and size) in one real block, seen by a detector
that starts ``position`` blocks before it: ``1st`` (the event block is the first block the
detector ever sees: a fresh deployment, or a backfill whose lake holds nothing earlier), ``2nd``,
``3rd``, or ``warm`` (6 earlier blocks). Only the event block's minute is scored. A case is
*detected* when a relevant finding of that minute is at least medium: for whales, value surges
and fee spikes an EWMA row of their metrics (``events.RELEVANT_METRICS``), for every other kind a
cluster holding at least one of the event's transactions.

False alarms: the same positions over every untouched real block; a block-evaluation is a false
alarm when any finding of its minute is at least medium, except the value rows of the real whale
blocks (a real transaction of >= 3,000 BTC: those are the real events detection must find).

``before`` is detection v1 (``EwmaConfig().v1()``, ``ClusterConfig().v1()``); ``after`` is v2 as
shipped (priors from both days, i.e. also from the untouched version of the event's block);
``held_out`` is v2 with priors derived from the *other* day only (``real_priors.held_out_priors``):
an out-of-sample check of how far the priors of 11-20 blocks carry to a new day.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

import duckdb
import numpy as np
import pandas as pd

from btc_anomaly_assets.aggregates.aggregates_sql import aggregate_minutes_duckdb
from btc_anomaly_assets.detection.clusters import detect_coordinated_clusters
from btc_anomaly_assets.detection.config import ClusterConfig, EwmaConfig
from btc_anomaly_assets.detection.ewma import detect_ewma_anomalies
from btc_anomaly_assets.detection.priors import builtin_priors
from btc_anomaly_testing import real_data
from btc_anomaly_testing.events import EVENTS, RELEVANT_METRICS, SAT, VALUE_METRICS, ImpossibleEvent
from btc_anomaly_testing.real_priors import DAYS, held_out_priors

POSITIONS = {"1st": 0, "2nd": 1, "3rd": 2, "warm": 6}
FLAGGED = ("medium", "high")
WHALE_BTC = 3_000


@dataclass(frozen=True)
class Setting:
    name: str
    ewma: EwmaConfig
    clusters: ClusterConfig


def settings_for(day: int, held_out: bool = True) -> tuple[Setting, ...]:
    """v1, v2 with the shipped priors, and (``held_out``) v2 with priors from the other day only."""
    out = [Setting("before", EwmaConfig().v1(), ClusterConfig().v1()),
           Setting("after", EwmaConfig(priors=builtin_priors()), ClusterConfig(priors=builtin_priors()))]
    if held_out:
        table = held_out_priors(day)
        out.append(Setting("held_out", EwmaConfig(priors=table), ClusterConfig(priors=table)))
    return tuple(out)


@dataclass(frozen=True)
class Day:
    day: int
    raw: pd.DataFrame
    blocks: tuple[int, ...]
    minutes: dict
    aggregates: pd.DataFrame
    whale_blocks: frozenset


@lru_cache(maxsize=2)
def load_day(day: int) -> Day:
    _, (start, end) = DAYS[day]
    raw = real_data.raw_in(real_data.real_raw(), start, end)
    minutes = real_data.block_minutes(raw)
    blocks = tuple(sorted(minutes))
    shared = {b for b in blocks if sum(m == minutes[b] for m in minutes.values()) > 1}
    if shared:
        raise ValueError(f"blocks {sorted(shared)} share a minute; the evaluation scores one block per minute")
    largest = raw[~raw["is_coinbase"]].groupby("block_id")["output_total"].max()
    return Day(day, raw, blocks, minutes, real_data.minute_aggregates(raw, start, end),
               frozenset(int(b) for b in largest[largest >= WHALE_BTC * SAT].index))


@lru_cache(maxsize=1)
def _connection() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()  # one in-memory connection for every case: opening one costs ~0.2 s


def _block(day: Day, block_id: int) -> pd.DataFrame:
    return day.raw[day.raw["block_id"] == block_id].reset_index(drop=True)


def score_case(day: Day, target: int, position: int, target_rows: pd.DataFrame, settings) -> list:
    """Per setting, (EWMA rows, cluster rows) of the target block's minute, for a detector that
    has seen only the ``position`` blocks before it (inputs built once for every setting)."""
    index = day.blocks.index(target)
    seen = day.blocks[index - position:index]
    minute = pd.Timestamp(day.minutes[target])
    end = minute + timedelta(minutes=1)
    earlier = day.raw[day.raw["block_id"].isin(seen)]
    raw = pd.concat([earlier, target_rows], ignore_index=True)
    first = pd.Timestamp(day.minutes[seen[0]]) if seen else minute
    history = day.aggregates[(day.aggregates["minute"] >= first) & (day.aggregates["minute"] < minute)]
    own = aggregate_minutes_duckdb(target_rows, minute.to_pydatetime(), end.to_pydatetime(), con=_connection())
    aggregates = pd.concat([history, own], ignore_index=True)
    return [(detect_ewma_anomalies(aggregates, minute, end, setting.ewma),
             detect_coordinated_clusters(raw, minute, end, setting.clusters)) for setting in settings]


def detected(kind: str, ewma: pd.DataFrame, clusters: pd.DataFrame, hashes) -> tuple[bool, str]:
    """Whether a relevant finding is >= medium, and which (``metric`` or ``pattern/evidence``)."""
    if kind in RELEVANT_METRICS:
        hits = ewma[ewma["severity"].isin(FLAGGED) & ewma["metric"].isin(RELEVANT_METRICS[kind])]
        return (not hits.empty), ",".join(sorted(set(hits["metric"])))
    wanted = set(hashes)
    flagged = clusters[clusters["severity"].isin(FLAGGED)]
    if flagged.empty:
        return False, ""
    hits = flagged[flagged["member_hashes"].map(lambda members: not wanted.isdisjoint(members)).to_numpy(dtype=bool)]
    evidence = hits["evidence"].fillna("members") if "evidence" in hits else ["members"] * len(hits)
    return (not hits.empty), ",".join(sorted({f"{p}/{e}" for p, e in zip(hits["pattern"], evidence)}))


def false_alarm(day: Day, target: int, ewma: pd.DataFrame, clusters: pd.DataFrame) -> str:
    """What alarmed in an untouched block ('' for nothing)."""
    flagged = ewma[ewma["severity"].isin(FLAGGED)]
    if target in day.whale_blocks:
        flagged = flagged[~flagged["metric"].isin(VALUE_METRICS)]
    found = list(flagged["metric"]) + list(clusters.loc[clusters["severity"].isin(FLAGGED), "pattern"])
    return ",".join(sorted(set(found)))


def _targets(day: Day, position: int, kind: str) -> list[int]:
    needed = POSITIONS["warm"] if position == POSITIONS["warm"] else position
    out = [b for i, b in enumerate(day.blocks) if i >= needed]
    if kind in ("whale", "value_surge"):
        out = [b for b in out if b not in day.whale_blocks]
    return out


def run(days=(13, 14), seeds=(0, 1), kinds=None, sizes: str = "all", positions=None, held_out: bool = True) -> pd.DataFrame:
    """Every case (one row per case and setting) plus the untouched block-evaluations (kind ``none``)."""
    rows = []
    kinds = kinds or list(EVENTS)
    positions = positions or list(POSITIONS)
    for day_number in days:
        day = load_day(day_number)
        settings = settings_for(day_number, held_out)
        for position_name in positions:
            position = POSITIONS[position_name]
            for target in _targets(day, position, "none"):
                scored = score_case(day, target, position, _block(day, target), settings)
                for setting, (ewma, clusters) in zip(settings, scored):
                    alarm = false_alarm(day, target, ewma, clusters)
                    rows.append({"day": day_number, "kind": "none", "size": "untouched", "beyond": False,
                                 "position": position_name, "seed": -1, "block": target, "setting": setting.name,
                                 "flagged": bool(alarm), "by": alarm})
        for kind in kinds:
            injector, kind_sizes = EVENTS[kind]
            for size in kind_sizes:
                if sizes == "beyond" and not size.beyond_real_range:
                    continue
                for position_name in positions:
                    position = POSITIONS[position_name]
                    targets = _targets(day, position, kind)
                    for seed in seeds:
                        rng = np.random.default_rng(zlib.crc32(f"{day_number}|{kind}|{size.label}|{position_name}|{seed}".encode()))
                        target = int(targets[int(rng.integers(len(targets)))])
                        tag = f"eval-{day_number}-{kind}-{size.label}-{position_name}-{seed}"
                        try:
                            rows_after, hashes = injector(_block(day, target), day.raw, size, rng, tag)
                        except ImpossibleEvent:
                            continue
                        scored = score_case(day, target, position, rows_after, settings)
                        for setting, (ewma, clusters) in zip(settings, scored):
                            hit, by = detected(kind, ewma, clusters, hashes)
                            rows.append({"day": day_number, "kind": kind, "size": size.label,
                                         "beyond": size.beyond_real_range, "position": position_name, "seed": seed,
                                         "block": target, "setting": setting.name, "flagged": hit, "by": by})
    return pd.DataFrame(rows)


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Share flagged per kind, size, position and setting (recall for events, false-alarm rate for ``none``)."""
    table = results.pivot_table(index=["kind", "size", "beyond"], columns=["setting", "position"], values="flagged",
                                aggfunc="mean")
    counts = results[results["setting"] == "after"].groupby(["kind", "size", "beyond"]).size().rename("cases")
    return table.join(counts)


def markdown(results: pd.DataFrame) -> str:
    """The evaluation table as Markdown: v1 -> v2 (shipped priors) per position and overall, and v2
    with held-out priors overall when that setting ran."""
    held = "held_out" in set(results["setting"])
    lines = ["| event | size | beyond real range | cases | " + " | ".join(f"{p} v1 -> v2" for p in POSITIONS)
             + " | all v1 -> v2 |" + (" all v2 held-out |" if held else ""),
             "|" + "---|" * (5 + len(POSITIONS) + held)]
    order = {kind: i for i, kind in enumerate(["none", *EVENTS])}
    grouped = results.groupby(["kind", "size", "beyond"], sort=False)
    for (kind, size, beyond), group in sorted(grouped, key=lambda item: (order.get(item[0][0], 99), item[1].index.min())):
        cells = [_cell(group if position is None else group[group["position"] == position]) for position in [*POSITIONS, None]]
        if held:
            cells.append(f"{group.loc[group['setting'] == 'held_out', 'flagged'].mean():.0%}")
        cases = int((group["setting"] == "after").sum())
        lines.append(f"| {kind} | {size} | {'yes' if beyond else 'no'} | {cases} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(part: pd.DataFrame) -> str:
    if part.empty:
        return "-"
    before = part.loc[part["setting"] == "before", "flagged"].mean()
    after = part.loc[part["setting"] == "after", "flagged"].mean()
    return f"{before:.0%} -> {after:.0%}"


def verdict(results: pd.DataFrame, *, setting: str = "after", min_recall: float = 0.9,
            max_false_alarms: float = 0.05) -> list[str]:
    """The issue's thresholds for v2: every beyond-range kind and size at >= ``min_recall`` (all
    positions together and the cold-start positions together), false alarms <= ``max_false_alarms``.
    Returns the failures (empty when v2 passes)."""
    after = results[results["setting"] == setting]
    failures = []
    events = after[after["beyond"]]
    for (kind, size), group in events.groupby(["kind", "size"]):
        cold = group[group["position"].isin(["1st", "2nd", "3rd"])]
        for what, part in (("all positions", group), ("first three blocks", cold)):
            if len(part) and part["flagged"].mean() < min_recall:
                failures.append(f"{kind} {size}: recall {part['flagged'].mean():.0%} < {min_recall:.0%} ({what}, {len(part)} cases)")
    untouched = after[after["kind"] == "none"]
    if len(untouched) and untouched["flagged"].mean() > max_false_alarms:
        alarms = untouched[untouched["flagged"]]
        failures.append(f"false alarms {untouched['flagged'].mean():.1%} > {max_false_alarms:.0%}: "
                        + "; ".join(f"{r.block}@{r.position}:{r.by}" for r in alarms.itertuples()))
    return failures
