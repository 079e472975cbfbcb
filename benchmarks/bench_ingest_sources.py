"""Time the raw-transaction sources on the real Blockchair excerpts; prints figures, asserts nothing.

Run: cd /work/main && python benchmarks/bench_ingest_sources.py
"""

from __future__ import annotations

import logging
import statistics
import time
from datetime import datetime

from btc_anomaly_assets.ingest.blockchair_api import BlockchairClient
from btc_anomaly_assets.ingest.blockchair_dump import read_dump_window
from btc_anomaly_testing.fakes.blockchair_server import FakeBlockchair, load_dump_rows
from btc_anomaly_testing.fixture_paths import BLOCKCHAIR_DIR

DUMP_DIR = BLOCKCHAIR_DIR
FILE_14 = DUMP_DIR / "blockchair_bitcoin_transactions_20250814_blocks909922-909932.tsv.gz"


def _median_seconds(action, repeats: int) -> tuple[float, object]:
    timings, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), result


def bench_dump(label: str, start: datetime, end: datetime, repeats: int = 5) -> None:
    seconds, result = _median_seconds(lambda: read_dump_window(DUMP_DIR, start, end), repeats)
    print(
        f"dump  {label:<28} {seconds:6.3f} s  rows kept {len(result.frame):>6}  scanned {result.rows_scanned:>6}  "
        f"stopped early: {bool(result.files_stopped_early)}  ({result.rows_scanned / seconds:,.0f} lines/s)"
    )


def bench_api(repeats: int = 3) -> None:
    rows = load_dump_rows(FILE_14)
    fake = FakeBlockchair(rows)
    start, end = datetime(2025, 8, 14, 0, 0), datetime(2025, 8, 14, 2, 0)
    quiet = logging.getLogger("bench.blockchair")
    quiet.setLevel(logging.WARNING)
    with fake.serve() as server:
        client = BlockchairClient(base_url=server.url, api_key="bench", logger=quiet)
        seconds, result = _median_seconds(lambda: client.fetch_window(start, end, mempool=False), repeats)
    print(
        f"api   14 Aug 00:00-02:00 (fake)     {seconds:6.3f} s  rows {len(result.frame):>6}  requests {result.requests_made}  "
        f"splits {result.windows_split}  cost {result.request_cost_total:.1f} points  "
        f"({result.requests_made / seconds:,.0f} requests/s on loopback)"
    )


if __name__ == "__main__":
    bench_dump("13 Aug 00:00-03:00 (whole)", datetime(2025, 8, 13, 0), datetime(2025, 8, 13, 3))
    bench_dump("13 Aug 00:00-01:00", datetime(2025, 8, 13, 0), datetime(2025, 8, 13, 1))
    bench_dump("13 Aug 01:00-01:01 (1 min)", datetime(2025, 8, 13, 1, 0), datetime(2025, 8, 13, 1, 1))
    bench_dump("13-14 Aug (two files)", datetime(2025, 8, 13), datetime(2025, 8, 15), repeats=3)
    bench_api()
