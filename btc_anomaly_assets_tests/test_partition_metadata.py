"""Per-partition figures in range runs: each minute's own numbers on its own materialization (public API only)."""

from datetime import datetime

import dagster as dg
import pandas as pd

from btc_anomaly_assets.common.dagster_helpers import add_minute_metadata, preview_metadata, window_of

MINUTES = dg.TimeWindowPartitionsDefinition(cron_schedule="* * * * *", fmt="%Y-%m-%d-%H:%M",
                                            start=datetime(2025, 8, 13), end=datetime(2025, 8, 14))


@dg.asset(partitions_def=MINUTES, backfill_policy=dg.BackfillPolicy.single_run())
def counted(context: dg.AssetExecutionContext):
    start, end = window_of(context)
    busy = pd.DataFrame({"tx_count": [7, 3], "value_moved_btc": [1.5, 0.25]},
                        index=[datetime(2025, 8, 13, 0, 5), datetime(2025, 8, 13, 0, 9)])
    add_minute_metadata(context, start, end, busy)
    return dg.MaterializeResult(metadata={"window_tx_count": 10, **preview_metadata(context, dg.MetadataValue.md("| a |"))})


def test_each_partition_gets_its_own_minute_and_quiet_minutes_get_zero():
    with dg.instance_for_test() as instance:
        result = dg.materialize([counted], instance=instance, tags={"dagster/asset_partition_range_start": "2025-08-13-00:00",
                                                                    "dagster/asset_partition_range_end": "2025-08-13-00:59"})
    by_partition = {m.partition: {k: v.value for k, v in m.metadata.items()}
                    for m in result.asset_materializations_for_node("counted")}
    assert len(by_partition) == 60
    # the run's preview table only on the range's last partition (the asset's latest materialization)
    assert [key for key, metadata in by_partition.items() if "preview" in metadata] == ["2025-08-13-00:59"]
    assert by_partition["2025-08-13-00:59"]["preview"] == "| a |" and by_partition["2025-08-13-00:59"]["tx_count"] == 0
    by_partition["2025-08-13-00:59"].pop("preview")
    assert by_partition["2025-08-13-00:05"] == {"window_tx_count": 10, "tx_count": 7, "value_moved_btc": 1.5}
    assert by_partition["2025-08-13-00:09"]["tx_count"] == 3
    assert by_partition["2025-08-13-00:06"] == {"window_tx_count": 10, "tx_count": 0, "value_moved_btc": 0.0}
    assert isinstance(by_partition["2025-08-13-00:06"]["tx_count"], int)


def test_a_single_partition_run_keeps_its_preview_in_the_result():
    with dg.instance_for_test() as instance:
        result = dg.materialize([counted], instance=instance, partition_key="2025-08-13-00:05")
    [materialization] = result.asset_materializations_for_node("counted")
    assert materialization.metadata["preview"].value == "| a |" and materialization.metadata["tx_count"].value == 7


def test_the_helper_uses_only_public_dagster_api():
    import inspect

    from btc_anomaly_assets.common import dagster_helpers

    source = inspect.getsource(dagster_helpers)
    assert "dagster._" not in source and "._step_execution_context" not in source


class _RecordingContext:
    """What Dagster does with the calls: partition-scoped metadata overrides the run's own."""

    def __init__(self):
        self.run_level, self.by_partition, self.partition_calls = {}, {}, 0

    def add_asset_metadata(self, metadata, partition_key=None):
        if partition_key is None:
            self.run_level.update(metadata)
        else:
            self.partition_calls += 1
            self.by_partition.setdefault(partition_key, {}).update(metadata)

    def effective(self, key):
        return {**self.run_level, **self.by_partition.get(key, {})}


def test_a_day_of_minutes_costs_one_call_per_minute_that_differs_and_every_minute_reads_its_own_figures():
    import pandas as pd

    from btc_anomaly_assets.common.dagster_helpers import add_minute_metadata

    start, end = datetime(2025, 8, 13), datetime(2025, 8, 14)
    busy = pd.date_range(start, periods=144, freq="10min")  # a block every ten minutes
    figures = pd.DataFrame({"dagster/row_count": range(1, 145), "severity_info": 9}, index=busy)
    context = _RecordingContext()
    add_minute_metadata(context, start, end, figures)
    assert context.partition_calls == 144  # not 1,440
    assert context.effective("2025-08-13-00:10") == {"dagster/row_count": 2, "severity_info": 9}
    assert context.effective("2025-08-13-00:11") == {"dagster/row_count": 0, "severity_info": 0}
