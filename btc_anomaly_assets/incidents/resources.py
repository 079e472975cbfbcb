"""Incident settings: the block explorer that links each transaction."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from btc_anomaly_assets.incidents.model import DEFAULT_EXPLORER_URL


class IncidentSettings(dg.ConfigurableResource):
    """``BTC_EXPLORER_URL``: base URL of the public block explorer, ``{base}/tx/{hash}`` per transaction."""

    explorer_url: str = Field(default=DEFAULT_EXPLORER_URL, description="Block-explorer base URL (links are {base}/tx/{hash})")

    def base_url(self) -> str:
        url = (self.explorer_url or DEFAULT_EXPLORER_URL).strip()
        if not url.lower().startswith(("http://", "https://")):
            raise dg.Failure(f"BTC_EXPLORER_URL={url!r} must start with http:// or https://")
        return url.rstrip("/")
