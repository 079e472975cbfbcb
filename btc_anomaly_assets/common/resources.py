"""Storage resources: the raw Parquet lake and the DuckDB warehouse."""

from __future__ import annotations

import dagster as dg

from btc_anomaly_assets.common.lake import raw_path
from btc_anomaly_assets.common.warehouse import Warehouse


class LakeResource(dg.ConfigurableResource):
    """The raw Parquet lake (a local path or an object-store URL Spark can also read)."""

    url: str

    @property
    def raw_transactions_path(self) -> str:
        return raw_path(self.url)


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file holding every derived table (schema ``btc``)."""

    path: str

    def get(self) -> Warehouse:
        return Warehouse(self.path)
