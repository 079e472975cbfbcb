"""The raw-transaction source, chosen by ``BTC_SOURCE``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

SOURCES = ("sample", "blockchair", "blockchair-dump", "mempool-space", "bitcoin-core")
PUSH_SOURCES = ("mempool-space", "bitcoin-core")  # read from the landing zone `btc-anomaly collect` writes
BLOCKCHAIR_MODES = ("mempool", "confirmed")


def sample_dir() -> Path:
    """The bundled real Blockchair excerpt (13 Aug 2025, blocks 909766-909785)."""
    return Path(str(importlib_resources.files("btc_anomaly_assets") / "data" / "sample"))


@dataclass
class SourceBatch:
    """What a source returned for one window, with the figures the checks and metadata need."""

    frame: pd.DataFrame
    reported_rows: int
    source: str
    detail: str
    figures: dict = field(default_factory=dict)
    # push sources only: minute -> why the feed did not see all of it (None: not a push source)
    incomplete_minutes: dict | None = None


class TransactionSource(dg.ConfigurableResource):
    """Fetches the transactions of a time window from the configured source."""

    source: str = Field(default="sample", description="sample | blockchair | blockchair-dump")
    dump_dir: Optional[str] = Field(default=None, description="Folder of Blockchair dump files (blockchair-dump)")
    api_url: str = Field(default="https://api.blockchair.com", description="Blockchair API base URL")
    api_key: Optional[str] = Field(default=None, description="Blockchair API key (secret)")
    blockchair_mode: str = Field(default="mempool", description="mempool (first-seen) | confirmed (block time)")

    def fetch(self, start: datetime, end: datetime, log, lake_url: str | None = None) -> SourceBatch:
        if self.source in PUSH_SOURCES:
            if not lake_url:
                raise dg.Failure(f"BTC_SOURCE={self.source} reads the landing zone, which needs the lake location")
            from btc_anomaly_assets.live.landing_source import landing_batch

            return landing_batch(lake_url, self.source, start, end, log)
        if self.source == "sample":
            return self._from_dumps(sample_dir(), start, end, "sample", log)
        if self.source == "blockchair-dump":
            if not self.dump_dir:
                raise dg.Failure("BTC_SOURCE=blockchair-dump needs BTC_DUMP_DIR (a folder of blockchair_bitcoin_transactions_*.tsv.gz)")
            return self._from_dumps(Path(self.dump_dir), start, end, "blockchair-dump", log)
        if self.source == "blockchair":
            return self._from_api(start, end, log)
        raise dg.Failure(f"BTC_SOURCE={self.source!r} is not one of {', '.join(SOURCES)}")

    def _from_dumps(self, folder: Path, start: datetime, end: datetime, name: str, log) -> SourceBatch:
        from btc_anomaly_assets.ingest.blockchair_dump import read_dump_window

        result = read_dump_window(folder, start, end, logger=log)
        if result.missing_dates and name == "blockchair-dump":
            raise dg.Failure(f"no dump file in {folder} for {', '.join(map(str, result.missing_dates))}: "
                             "the window would be stored incomplete")
        return SourceBatch(
            frame=result.frame,
            reported_rows=result.rows_in_window - result.duplicates_dropped,
            source=name,
            detail=", ".join(Path(f).name for f in result.files_read) or f"no dump file in {folder} covers the window",
            figures={"rows_scanned": result.rows_scanned, "rows_in_window": result.rows_in_window,
                     "duplicates_dropped": result.duplicates_dropped,
                     # files Arrow's reader refused and the line reader read (a warning says why)
                     "files_read_line_by_line": len(result.files_read_line_by_line)},
        )

    def _from_api(self, start: datetime, end: datetime, log) -> SourceBatch:
        from btc_anomaly_assets.ingest.blockchair_api import BlockchairClient

        if self.blockchair_mode not in BLOCKCHAIR_MODES:
            raise dg.Failure(f"BTC_BLOCKCHAIR_MODE={self.blockchair_mode!r} is not one of {', '.join(BLOCKCHAIR_MODES)}")
        from btc_anomaly_assets.common.utc import naive_utc
        from btc_anomaly_assets.live.minute_close import wait_for_close

        # a live run launched ahead of its minute polls once the minute has closed
        waited = wait_for_close(naive_utc(end), None, log)
        with BlockchairClient(base_url=self.api_url, api_key=self.api_key or None, logger=log) as client:
            result = client.fetch_window(start, end, mempool=self.blockchair_mode == "mempool")
        return SourceBatch(
            frame=result.frame,
            reported_rows=result.reported_total_rows - result.duplicates_dropped,
            source="blockchair",
            detail=f"{'mempool/' if self.blockchair_mode == 'mempool' else ''}transactions, state {result.state}",
            figures={"requests": result.requests_made, "request_cost": float(result.request_cost_total),
                     "rows_received": result.rows_received, "duplicates_dropped": result.duplicates_dropped,
                     "windows_split": result.windows_split, "api_version": result.api_version or "?",
                     "close_wait_seconds": waited.waited_seconds},
        )
