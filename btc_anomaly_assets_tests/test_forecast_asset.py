"""btc/transaction_forecast as Dagster runs it: a forecast from DuckDB, or a plain 'no forecast yet'."""

from datetime import datetime

import dagster as dg

from btc_anomaly_assets.aggregates.aggregates_sql import aggregate_minutes_duckdb
from btc_anomaly_assets.common.resources import WarehouseResource
from btc_anomaly_assets.common.schema import MINUTE_AGGREGATE_COLUMNS
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.forecast.assets import transaction_forecast
from btc_anomaly_testing.real_data import real_raw


def _warehouse(tmp_path, start, end) -> WarehouseResource:
    resource = WarehouseResource(path=str(tmp_path / "w.duckdb"))
    Warehouse(resource.path).replace_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS,
                                            aggregate_minutes_duckdb(real_raw(), start, end), start, end)
    return resource


def test_forecast_of_the_sample_hours_reads_duckdb_and_scores_a_backtest(tmp_path):
    warehouse = _warehouse(tmp_path, datetime(2025, 8, 13, 0, 0), datetime(2025, 8, 13, 3, 0))
    result = dg.materialize([transaction_forecast], resources={"warehouse": warehouse}, partition_key="2025-08-13-02:59")
    assert result.success
    rows = Warehouse(warehouse.path).query("SELECT * FROM btc.transaction_forecast ORDER BY step")
    assert len(rows) == 30 and (rows["yhat_lower"] >= 0).all()
    check = next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION")
    assert check.metadata["scored_forecast"].value == "backtest" and check.metadata["points"].value == 30
    assert 0.0 <= check.metadata["coverage"].value <= 1.0


def test_a_fresh_deployment_without_history_records_no_forecast_instead_of_failing(tmp_path):
    warehouse = _warehouse(tmp_path, datetime(2025, 8, 13, 0, 0), datetime(2025, 8, 13, 0, 20))
    result = dg.materialize([transaction_forecast], resources={"warehouse": warehouse}, partition_key="2025-08-13-00:19")
    assert result.success
    metadata = result.asset_materializations_for_node("btc__transaction_forecast")[0].metadata
    assert metadata["note"].value.startswith("no forecast: ") and metadata["dagster/row_count"].value == 0
    assert Warehouse(warehouse.path).query("SELECT count(*) AS n FROM btc.transaction_forecast")["n"].iloc[0] == 0
