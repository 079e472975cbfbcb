"""A fake Blockchair API v2 (transactions infinitables) on the loopback server.

It serves rows read from a real Blockchair dump file, in Blockchair's response shape::

    {"data": [...rows...], "context": {"code": 200, "source": "D", "limit": .., "offset": .., "rows": ..,
     "total_rows": .., "state": .., "cache": {...}, "api": {"version": "2.0.95-ie", ...}, "request_cost": ..}}

and error bodies ``{"data": null, "context": {"code": 430, "error": "..."}}``. It honours
``q=time(A...B)`` / ``time(A..B)`` and ``block_id(..N)``-style filters, ``s=time(asc),id(asc)``
(default sort ``id`` descending, like the real API), ``limit`` 1..100 and ``offset`` <= ``max_offset``
(400 above it, like the real API's 10,000 cap). Faults are scripted per request: error codes (with
Retry-After, or a context.code different from the HTTP status), slow replies, malformed JSON, and
a new block appearing after a given number of requests (a page shift).

The dump is parsed here with the csv module, independently of the library under test, so a bug in
the library's dump reader cannot hide in the fake.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from btc_anomaly_testing.fakes.loopback import LoopbackServer, Reply, Request

API_VERSION = "2.0.95-ie"
CONFIRMED_PATH = "/bitcoin/transactions"
MEMPOOL_PATH = "/bitcoin/mempool/transactions"
_INT_FIELDS = {
    "block_id", "size", "weight", "version", "lock_time", "input_count", "output_count",
    "input_total", "output_total", "fee",
}
_BOOL_FIELDS = {"is_coinbase", "has_witness"}
_TEXT_FIELDS = {"hash", "time"}
_FILTER = re.compile(r"(\w+)\(([^()]*)\)")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def load_dump_rows(path: Path, *, first_id: int = 1_000_000_000) -> list[dict]:
    """Rows of a Blockchair dump as the API returns them: typed values plus ``id`` and ``date``."""
    rows = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as stream:
        for number, record in enumerate(csv.DictReader(stream, delimiter="\t")):
            row: dict = {"block_id": int(record["block_id"]), "id": first_id + number}
            for name, text in record.items():
                if name in _INT_FIELDS:
                    row[name] = int(text)
                elif name in _BOOL_FIELDS:
                    row[name] = text == "1"
                elif name in _TEXT_FIELDS:
                    row[name] = text
                else:
                    row[name] = float(text)
            row["date"] = row["time"][:10]
            rows.append(row)
    return rows


def as_mempool_rows(rows: list[dict], *, spread_seconds: int = 600) -> list[dict]:
    """The same transactions as mempool rows: block_id -1 and a first-seen time spread before
    the block time (deterministic: the i-th row arrived ``i % spread_seconds`` seconds earlier)."""
    mempool = []
    for index, row in enumerate(rows):
        if row["is_coinbase"]:
            continue  # a coinbase never sits in the mempool
        seen = datetime.strptime(row["time"], _TIME_FORMAT) - timedelta(seconds=index % spread_seconds)
        mempool.append({**row, "block_id": -1, "time": seen.strftime(_TIME_FORMAT), "date": seen.strftime("%Y-%m-%d")})
    return mempool


@dataclass
class Fault:
    """One scripted reply that replaces (or delays) the normal answer to the next request."""

    kind: str  # "error" | "slow" | "malformed"
    code: int = 200
    http_status: int | None = None
    retry_after: str | None = None
    error: str | None = None
    delay_seconds: float = 0.0


class _Table:
    """Rows kept sorted by (time, id) so a time filter is a bisect, not a scan."""

    def __init__(self, rows: list[dict]):
        self.rows: list[dict] = []
        self.times: list[str] = []
        self.add(rows)

    def add(self, rows: list[dict]) -> None:
        self.rows = sorted([*self.rows, *rows], key=lambda row: (row["time"], row["id"]))
        self.times = [row["time"] for row in self.rows]

    def select(self, filters: list[tuple[str, str]]) -> list[dict]:
        selected = self.rows
        for name, expression in filters:  # the fake accepts at most one time filter (checked by the caller)
            if name == "time":
                low, high = _time_bounds(expression)
                lo = 0 if low is None else bisect.bisect_left(self.times, low)
                hi = len(self.times) if high is None else bisect.bisect_left(self.times, high)
                selected = self.rows[lo:hi]
        for name, expression in filters:
            if name != "time":
                test = _range_test(expression, int)
                selected = [row for row in selected if test(row[name])]
        return selected


def _time_bounds(expression: str) -> tuple[str | None, str | None]:
    """[low, high) string bounds for a time expression (fixed-width text sorts like time)."""
    if "..." in expression:
        low, high = expression.split("...", 1)
        return (low or None), (high or None)
    if ".." in expression:
        low, high = expression.split("..", 1)
        return (low or None), (_next_second(high) if high else None)
    return expression, _next_second(expression)


def _next_second(text: str) -> str:
    return (datetime.strptime(text, _TIME_FORMAT) + timedelta(seconds=1)).strftime(_TIME_FORMAT)


def _range_test(expression: str, convert):
    if "..." in expression:
        low, high = expression.split("...", 1)
        low_v = convert(low) if low else None
        high_v = convert(high) if high else None
        return lambda v: (low_v is None or v >= low_v) and (high_v is None or v < high_v)
    if ".." in expression:
        low, high = expression.split("..", 1)
        low_v = convert(low) if low else None
        high_v = convert(high) if high else None
        return lambda v: (low_v is None or v >= low_v) and (high_v is None or v <= high_v)
    exact = convert(expression)
    return lambda v: v == exact


class FakeBlockchair:
    """The fake service: ``FakeBlockchair(rows).serve()`` gives a LoopbackServer to use ``with``."""

    def __init__(
        self,
        confirmed_rows: list[dict] = (),
        mempool_rows: list[dict] = (),
        *,
        state: int | None = None,
        max_offset: int = 10_000,
        bools_as_ints: bool = False,
        next_major_update: str | None = None,
    ):
        self.tables = {CONFIRMED_PATH: _Table(list(confirmed_rows)), MEMPOOL_PATH: _Table(list(mempool_rows))}
        heights = [row["block_id"] for row in confirmed_rows]
        self.state = state if state is not None else (max(heights) if heights else 0)
        self.max_offset = max_offset
        self.bools_as_ints = bools_as_ints
        self.next_major_update = next_major_update
        self.faults: list[Fault] = []
        self.request_count = 0
        self._pending_rows: list[tuple[int, str, list[dict]]] = []
        self._lock = threading.Lock()

    # -- scripting ----------------------------------------------------------------------------

    def fail_next(self, code: int, *, times: int = 1, retry_after: str | None = None,
                  http_status: int | None = None, error: str | None = None) -> None:
        """The next ``times`` requests get error ``code`` (HTTP status ``http_status`` or the same)."""
        self.faults.extend(Fault("error", code, http_status, retry_after, error) for _ in range(times))

    def slow_next(self, seconds: float, *, times: int = 1) -> None:
        """The next ``times`` requests are answered normally but only after ``seconds``."""
        self.faults.extend(Fault("slow", delay_seconds=seconds) for _ in range(times))

    def malformed_next(self, *, times: int = 1) -> None:
        """The next ``times`` requests get HTTP 200 with a body that is not valid JSON."""
        self.faults.extend(Fault("malformed") for _ in range(times))

    def add_block_after(self, request_count: int, rows: list[dict]) -> None:
        """Mine a new block (confirmed rows + tip height) once ``request_count`` requests were answered."""
        self._pending_rows.append((request_count, CONFIRMED_PATH, rows))

    def add_mempool_rows_after(self, request_count: int, rows: list[dict]) -> None:
        """New mempool arrivals once ``request_count`` requests were answered."""
        self._pending_rows.append((request_count, MEMPOOL_PATH, rows))

    def serve(self) -> LoopbackServer:
        """A loopback server of its own for this fake (use ``with``)."""
        return LoopbackServer(self.handle)

    # -- serving ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        with self._lock:
            self._add_due_rows()
            self.request_count += 1
            fault = self.faults.pop(0) if self.faults else None
            if fault is not None and fault.kind == "error":
                return self._error(fault.code, fault.error or _DEFAULT_ERRORS.get(fault.code, "error"),
                                   http_status=fault.http_status, retry_after=fault.retry_after)
            if fault is not None and fault.kind == "malformed":
                return Reply(200, b'{"data": [{"block_id": 1, "hash": "ab', {"Content-Type": "application/json"})
            reply = self._answer(request)
            if fault is not None and fault.kind == "slow":
                reply.delay_seconds = fault.delay_seconds
            return reply

    def _add_due_rows(self) -> None:
        due_now = [entry for entry in self._pending_rows if self.request_count >= entry[0]]
        for entry in due_now:
            self._pending_rows.remove(entry)
            _, path, rows = entry
            self.tables[path].add(rows)
            if path == CONFIRMED_PATH:
                self.state = max(self.state, *(row["block_id"] for row in rows))

    def _answer(self, request: Request) -> Reply:
        table = self.tables.get(request.path)
        if table is None:
            return self._error(404, "Unknown endpoint")
        try:
            limit = int(request.param("limit", "10"))
            offset = int(request.param("offset", "0"))
        except ValueError:
            return self._error(400, "Invalid limit or offset")
        if not 1 <= limit <= 100:
            return self._error(400, "Limit must be between 1 and 100")
        if not 0 <= offset <= self.max_offset:
            return self._error(400, f"Offset can't be greater than {self.max_offset}")
        query = request.param("q", "") or ""
        filters = _FILTER.findall(query)
        if ",".join(f"{name}({expr})" for name, expr in filters) != query:
            return self._error(400, f"Can't parse the query: {query}")
        if any(name not in ("time", "block_id", "id") for name, _ in filters):
            return self._error(400, "Unknown column in the query")
        if sum(name == "time" for name, _ in filters) > 1:
            return self._error(400, "This fake accepts one time filter")
        sort = request.param("s")
        selected = table.select(filters)
        if sort is None:
            ordered = sorted(selected, key=lambda row: row["id"], reverse=True)
        elif sort == "time(asc),id(asc)":
            ordered = selected  # the table is kept in this order
        else:
            return self._error(400, f"Unsupported sort in this fake: {sort}")
        page = [self._render(row) for row in ordered[offset : offset + limit]]
        base_cost = 2 if request.path == MEMPOOL_PATH else 5
        cost = round((base_cost + len(filters)) * (1 + 0.01 * max(0, limit - 10)), 4)
        context = {
            "code": 200,
            "source": "D",
            "limit": limit,
            "offset": offset,
            "rows": len(page),
            "pre_rows": len(page),
            "total_rows": len(selected),
            "state": self.state,
            "cache": {"live": True, "duration": 60, "since": "2025-08-14 03:00:00", "until": "2025-08-14 03:01:00", "time": None},
            "api": {
                "version": API_VERSION,
                "last_major_update": "2022-11-07 02:00:00",
                "next_major_update": self.next_major_update,
                "documentation": "https://github.com/Blockchair/Blockchair.Support/blob/master/API.md",
                "notice": ":)",
            },
            "request_cost": cost,
        }
        return Reply(200, {"data": page, "context": context})

    def _render(self, row: dict) -> dict:
        if not self.bools_as_ints:
            return row
        return {**row, **{name: int(row[name]) for name in _BOOL_FIELDS}}

    def _error(self, code: int, error: str, *, http_status: int | None = None, retry_after: str | None = None) -> Reply:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return Reply(http_status or code, {"data": None, "context": {"code": code, "error": error}}, headers)


class FakeBlockchairHost:
    """One loopback server shared by many fakes, one at a time (``with host.use(fake) as server``).

    Starting and stopping a LoopbackServer costs up to half a second (its serve loop polls for
    shutdown every 0.5 s), so a test module keeps one host and swaps the fake behind it.
    """

    def __init__(self):
        self.fake: FakeBlockchair | None = None
        self.server = LoopbackServer(self._dispatch)

    def _dispatch(self, request: Request) -> Reply:
        if self.fake is None:
            return Reply(503, {"data": None, "context": {"code": 503, "error": "no fake installed"}})
        return self.fake.handle(request)

    def __enter__(self) -> "FakeBlockchairHost":
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    @contextmanager
    def use(self, fake: FakeBlockchair):
        """Serve ``fake`` for the duration of the block; the server's request log starts empty."""
        self.fake = fake
        self.server.requests.clear()
        try:
            yield self.server
        finally:
            self.fake = None


_DEFAULT_ERRORS = {
    402: "Limit exceeded",
    429: "Too many requests",
    430: "Your IP address is temporary blacklisted due to exceeding usage of API resources",
    434: "Your IP address is blocked",
    435: "Too many requests per second",
    503: "Service unavailable",
    400: "Invalid request",
}
