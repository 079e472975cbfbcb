"""The landing zone: what a push collector saw, minute by minute, before any asset reads it.

Layout under ``<lake>/landing/<source>/`` (a local folder; the collector runs beside the node or
the WebSocket, one per deployment):

- ``transactions/date=YYYY-MM-DD/HH-MM.parquet``: one row per transaction first seen in that
  minute, with the raw schema's columns (``time`` = first-seen, ``time_basis = first_seen``);
- ``events/date=YYYY-MM-DD/HH-MM.parquet``: replacement, eviction and mining events
  (``replaced`` / ``removed`` / ``mined``), kept as data for later RBF-storm and eviction work;
- ``state.json``: when the collector started, when it last flushed (``alive_at``), the last
  message and feed sequence it saw, and every **gap** (``start``, ``end`` or null while open,
  ``reason``, ``detail``, how many transactions a REST re-fill recovered).

Every file is written whole into a temporary file and renamed over the old one, so a reader sees
the previous or the next version of a minute, never half of one. A minute is *incomplete* when a
gap overlaps it, when the collector was not running for all of it (before its first start, or
after its last flush), and the reader says which and why.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from btc_anomaly_assets.common.lake import RAW_NAMES, RAW_SCHEMA
from btc_anomaly_assets.common.utc import naive_utc
from btc_anomaly_assets.ingest.raw_frames import concat_raw_frames, empty_raw_frame
from btc_anomaly_assets.live.raw_mapping import rows_to_raw_frame

LANDING_DIR = "landing"
EVENT_KINDS = ("removed", "mined", "replaced")
EVENT_SCHEMA = pa.schema([
    pa.field("time", pa.timestamp("us")), pa.field("minute", pa.timestamp("us")), pa.field("kind", pa.string()),
    pa.field("txid", pa.string()), pa.field("by_txid", pa.string()), pa.field("block_hash", pa.string()),
])
_TIME = "%Y-%m-%dT%H:%M:%S.%f"


class LandingError(RuntimeError):
    """The landing zone cannot be used as asked; the message names the folder or file."""


def landing_root(lake_url: str, source: str) -> Path:
    if "://" in lake_url:
        raise LandingError(f"the landing zone is a local folder; BTC_LAKE_URL={lake_url} is an object store "
                           "(run the collector with a local BTC_LAKE_URL, or point BTC_DATA_DIR at a shared disk)")
    return Path(lake_url).expanduser().resolve() / LANDING_DIR / source


def _minute_file(folder: Path, minute: datetime) -> Path:
    return folder / f"date={minute:%Y-%m-%d}" / f"{minute:%H-%M}.parquet"


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _stamp(moment: datetime | None) -> str | None:
    return None if moment is None else naive_utc(moment).strftime(_TIME)


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.strptime(text, _TIME)


@dataclass
class Gap:
    start: datetime
    end: datetime | None  # None while the gap is open (disconnected now)
    reason: str  # disconnect | sequence | restart | malformed | lookup_failed | oversized
    detail: str = ""
    refilled: int = 0  # transactions a REST/RPC re-fill recovered for it
    refill_note: str = ""

    def to_json(self) -> dict:
        return {**asdict(self), "start": _stamp(self.start), "end": _stamp(self.end)}

    @classmethod
    def from_json(cls, data: dict) -> Gap:
        return cls(**{**data, "start": _parse(data["start"]), "end": _parse(data.get("end"))})


@dataclass
class LandingState:
    source: str
    started_at: datetime | None = None  # first start ever (minutes before it were never watched)
    alive_at: datetime | None = None  # last flush: the collector watched the feed up to here
    last_message_at: datetime | None = None
    last_sequence: int | None = None
    gaps: list[Gap] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"source": self.source, "started_at": _stamp(self.started_at), "alive_at": _stamp(self.alive_at),
                "last_message_at": _stamp(self.last_message_at), "last_sequence": self.last_sequence,
                "gaps": [g.to_json() for g in self.gaps]}

    @classmethod
    def from_json(cls, data: dict) -> LandingState:
        return cls(source=data["source"], started_at=_parse(data.get("started_at")), alive_at=_parse(data.get("alive_at")),
                   last_message_at=_parse(data.get("last_message_at")), last_sequence=data.get("last_sequence"),
                   gaps=[Gap.from_json(g) for g in data.get("gaps", [])])


def read_state(root: Path, source: str) -> LandingState:
    path = root / "state.json"
    if not path.exists():
        return LandingState(source=source)
    try:
        return LandingState.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise LandingError(f"{path} is not a landing state file: {exc}") from exc


class LandingZone:
    """The collector's writer: buffer rows and events, then ``flush`` them into their minute files."""

    def __init__(self, lake_url: str, source: str):
        self.root = landing_root(lake_url, source)
        self.source = source
        self.state = read_state(self.root, source)
        self._rows: dict[datetime, list[dict]] = {}
        self._events: dict[datetime, list[dict]] = {}
        self._lock = threading.Lock()
        self.landed = 0  # transactions written by this process (after de-duplication within minute files)

    # --- buffering
    def add_transaction(self, row: dict) -> None:
        minute = row["time"].replace(second=0, microsecond=0)
        with self._lock:
            self._rows.setdefault(minute, []).append(row)

    def add_event(self, moment: datetime, kind: str, txid: str, by_txid: str | None = None, block_hash: str | None = None) -> None:
        if kind not in EVENT_KINDS:
            raise LandingError(f"unknown landing event kind {kind!r}; expected one of {EVENT_KINDS}")
        minute = moment.replace(second=0, microsecond=0)
        with self._lock:
            self._events.setdefault(minute, []).append(
                {"time": moment, "minute": minute, "kind": kind, "txid": txid, "by_txid": by_txid, "block_hash": block_hash})

    # --- gaps
    def open_gap(self, start: datetime, reason: str, detail: str = "") -> Gap:
        gap = Gap(start=naive_utc(start), end=None, reason=reason, detail=detail)
        with self._lock:
            self.state.gaps.append(gap)
        return gap

    def close_gap(self, gap: Gap, end: datetime) -> None:
        with self._lock:
            gap.end = max(naive_utc(end), gap.start)

    def record_gap(self, start: datetime, end: datetime, reason: str, detail: str = "") -> Gap:
        gap = self.open_gap(start, reason, detail)
        self.close_gap(gap, end)
        return gap

    # --- writing
    def flush(self, now: datetime) -> int:
        """Write every buffered minute (merged with what its file holds, earliest first-seen kept per
        hash), then the state with ``alive_at = now``. Returns the new transactions written."""
        with self._lock:
            rows, self._rows = self._rows, {}
            events, self._events = self._events, {}
        written = 0
        for minute, batch in sorted(rows.items()):
            written += self._write_minute(minute, batch)
        for minute, batch in sorted(events.items()):
            self._write_events(minute, batch)
        with self._lock:
            if self.state.started_at is None:
                self.state.started_at = naive_utc(now)
            self.state.alive_at = naive_utc(now)
            payload = json.dumps(self.state.to_json(), indent=1)
        _atomic_write_bytes(self.root / "state.json", lambda tmp: tmp.write_text(payload))
        self.landed += written
        return written

    def _write_minute(self, minute: datetime, batch: list[dict]) -> int:
        path = _minute_file(self.root / "transactions", minute)
        new = rows_to_raw_frame(batch, where=f"landing {path.name}")
        old = pq.read_table(path, schema=RAW_SCHEMA).to_pandas() if path.exists() else empty_raw_frame()
        merged = concat_raw_frames([old, new.sort_values("time", kind="stable")])  # keeps the first: the stored row wins
        table = pa.Table.from_pandas(merged[RAW_NAMES].sort_values(["time", "hash"]), schema=RAW_SCHEMA, preserve_index=False)
        _atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        return len(merged) - len(old)

    def _write_events(self, minute: datetime, batch: list[dict]) -> None:
        path = _minute_file(self.root / "events", minute)
        table = pa.Table.from_pylist(batch, schema=EVENT_SCHEMA)
        if path.exists():
            table = pa.concat_tables([pq.read_table(path, schema=EVENT_SCHEMA), table])
        _atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    def recent_hashes(self, now: datetime, minutes: int) -> set[str]:
        """Hashes landed in the last ``minutes`` minutes (a restarted collector's de-duplication memory)."""
        found: set[str] = set()
        minute = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes)
        while minute <= now:
            path = _minute_file(self.root / "transactions", minute)
            if path.exists():
                found.update(pq.read_table(path, columns=["hash"]).column("hash").to_pylist())
            minute += timedelta(minutes=1)
        return found


# ------------------------------------------------------------------------------------------------
# Reading (the raw_transactions asset)


@dataclass
class LandingWindow:
    frame: pd.DataFrame
    incomplete: dict[datetime, list[str]]  # minute -> why it is incomplete
    gaps: list[Gap]  # the gaps overlapping the window
    state: LandingState
    files_read: int


def minute_problems(state: LandingState, start: datetime, end: datetime, now: datetime) -> dict[datetime, list[str]]:
    """Why each minute of ``[start, end)`` is incomplete (minutes absent from the result are complete)."""
    problems: dict[datetime, list[str]] = {}
    minute = start
    while minute < end:
        close = minute + timedelta(minutes=1)
        reasons = []
        if state.started_at is None or state.started_at > minute:
            reasons.append("collector not yet started" if state.started_at is None or state.started_at >= close
                           else "collector started during the minute")
        elif state.alive_at is None or state.alive_at < close:
            reasons.append(f"collector not seen after {state.alive_at:%H:%M:%S}" if state.alive_at else "collector never flushed")
        for gap in state.gaps:
            gap_end = gap.end or state.alive_at or now
            if gap.start < close and gap_end > minute:
                note = f", {gap.refilled} re-filled" if gap.refilled else ""
                reasons.append(f"gap {gap.reason} {gap.start:%H:%M:%S}-{gap_end:%H:%M:%S}"
                               f"{'' if gap.end else ' (open)'}{note}")
        if reasons:
            problems[minute] = reasons
        minute = close
    return problems


def read_landing_window(lake_url: str, source: str, start: datetime, end: datetime, now: datetime) -> LandingWindow:
    """The landed transactions first seen in ``[start, end)``, and which of its minutes are incomplete."""
    start, end = naive_utc(start), naive_utc(end)
    root = landing_root(lake_url, source)
    state = read_state(root, source)
    frames, minute = [], start
    while minute < end:
        path = _minute_file(root / "transactions", minute)
        if path.exists():
            frames.append(pq.read_table(path, schema=RAW_SCHEMA).to_pandas())
        minute += timedelta(minutes=1)
    frame = concat_raw_frames(frames) if frames else empty_raw_frame()
    gaps = [g for g in state.gaps if g.start < end and (g.end or state.alive_at or now) > start]
    return LandingWindow(frame, minute_problems(state, start, end, now), gaps, state, len(frames))


def read_landing_events(lake_url: str, source: str, start: datetime, end: datetime) -> pd.DataFrame:
    """Replacement / eviction / mining events of ``[start, end)``."""
    root = landing_root(lake_url, source)
    tables, minute = [], naive_utc(start)
    while minute < naive_utc(end):
        path = _minute_file(root / "events", minute)
        if path.exists():
            tables.append(pq.read_table(path, schema=EVENT_SCHEMA))
        minute += timedelta(minutes=1)
    return (pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()).to_pandas()
