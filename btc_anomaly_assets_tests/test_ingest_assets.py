"""btc/raw_transactions as Dagster runs it: each source, the lake, and the gates that stop bad data."""

import gzip
import logging
import shutil
from datetime import datetime

import dagster as dg

from btc_anomaly_assets.aggregates.assets import minute_aggregates
from btc_anomaly_assets.aggregates.resources import build_pyspark_resource
from btc_anomaly_assets.common.lake import read_raw_window
from btc_anomaly_assets.common.resources import LakeResource, WarehouseResource
from btc_anomaly_assets.ingest.assets import raw_transactions
from btc_anomaly_assets.ingest.resources import TransactionSource
from btc_anomaly_testing.fakes.blockchair_server import FakeBlockchair, as_mempool_rows, load_dump_rows
from btc_anomaly_testing.fixture_paths import BLOCKCHAIR_DIR

DUMPS = BLOCKCHAIR_DIR
DUMP_14 = DUMPS / "blockchair_bitcoin_transactions_20250814_blocks909922-909932.tsv.gz"


def _dump_rows_between(path, first: str, end: str) -> int:
    """Independent count straight from the gzip text (column 3 is the time)."""
    with gzip.open(path, "rt") as lines:
        next(lines)
        return sum(1 for line in lines if first <= line.split("\t", 3)[2] < end)


def _range(first: str, last: str) -> dict:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def _checks(result) -> dict:
    return {e.event_specific_data.check_name: e.event_specific_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_sample_source_fills_exactly_the_window_and_rerunning_keeps_it(tmp_path):
    lake = LakeResource(url=str(tmp_path / "lake"))
    for _ in range(2):
        result = dg.materialize([raw_transactions], resources={"source": TransactionSource(), "lake": lake},
                                tags=_range("2025-08-13-00:10", "2025-08-13-00:29"))
        assert result.success and all(_checks(result).values())
    stored = read_raw_window(lake.raw_transactions_path, datetime(2025, 8, 13), datetime(2025, 8, 14))
    assert stored["minute"].min() >= datetime(2025, 8, 13, 0, 10) and stored["minute"].max() < datetime(2025, 8, 13, 0, 30)
    expected = _dump_rows_between(DUMPS / "blockchair_bitcoin_transactions_20250813_blocks909766-909785.tsv.gz",
                                  "2025-08-13 00:10:00", "2025-08-13 00:30:00")
    assert len(stored) == expected > 0 and stored["hash"].is_unique
    # Each minute's partition carries that minute's own figures (a range run must not copy the total onto every minute).
    materializations = result.asset_materializations_for_node("btc__raw_transactions")
    per_partition = {m.partition: m.metadata["dagster/row_count"].value for m in materializations}
    expected_per_minute = stored.groupby(stored["minute"].dt.strftime("%Y-%m-%d-%H:%M")).size().to_dict()
    assert len(per_partition) == 20 and sum(per_partition.values()) == len(stored)
    assert per_partition == {k: expected_per_minute.get(k, 0) for k in per_partition}
    assert {m.metadata["window_rows"].value for m in materializations} == {len(stored)}
    assert materializations[0].metadata["time_basis"].value == "block"


def test_blockchair_mempool_source_stores_first_seen_rows_and_hides_the_key(tmp_path, caplog):
    rows = as_mempool_rows(load_dump_rows(DUMP_14))
    fake = FakeBlockchair(mempool_rows=rows, state=909932)
    lake = LakeResource(url=str(tmp_path / "lake"))
    key = "bc-test-key-8d7f"
    with fake.serve() as server, caplog.at_level(logging.DEBUG):
        source = TransactionSource(source="blockchair", api_url=server.url, api_key=key, blockchair_mode="mempool")
        result = dg.materialize([raw_transactions], resources={"source": source, "lake": lake},
                                tags=_range("2025-08-14-00:10", "2025-08-14-00:14"))
    assert result.success and all(_checks(result).values())
    stored = read_raw_window(lake.raw_transactions_path, datetime(2025, 8, 14, 0, 10), datetime(2025, 8, 14, 0, 15))
    expected = [r for r in rows if "2025-08-14 00:10:00" <= r["time"] < "2025-08-14 00:15:00"]
    assert len(stored) == len(expected) > 0
    assert set(stored["time_basis"]) == {"first_seen"} and (stored["block_id"] == -1).all()
    metadata = result.asset_materializations_for_node("btc__raw_transactions")[0].metadata
    assert metadata["source_requests"].value >= 1
    everything = caplog.text + str({k: v.value for k, v in metadata.items()}) + str(result.all_events)
    assert key not in everything


def test_a_blocking_check_stops_bad_data_from_flowing_on(tmp_path):
    dump_dir = tmp_path / "dumps"
    dump_dir.mkdir()
    corrupted = dump_dir / DUMP_14.name
    with gzip.open(DUMP_14, "rt") as src, gzip.open(corrupted, "wt") as dst:
        for number, line in enumerate(src):
            if number == 5:  # a row whose fee no longer equals input_total - output_total
                fields = line.rstrip("\n").split("\t")
                fields[15] = str(int(fields[15]) + 1)
                line = "\t".join(fields) + "\n"
            dst.write(line)
    resources = {
        "source": TransactionSource(source="blockchair-dump", dump_dir=str(dump_dir)),
        "lake": LakeResource(url=str(tmp_path / "lake")),
        "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "pyspark": build_pyspark_resource("local[1]", None),
    }
    result = dg.materialize([raw_transactions, minute_aggregates], resources=resources,
                            tags=_range("2025-08-14-00:00", "2025-08-14-00:09"), raise_on_error=False)
    assert not result.success
    assert _checks(result)["fee_equals_inputs_minus_outputs"] is False
    evaluation = next(e.event_specific_data for e in result.all_events
                      if e.event_type_value == "ASSET_CHECK_EVALUATION"
                      and e.event_specific_data.check_name == "fee_equals_inputs_minus_outputs")
    assert evaluation.metadata["offending_rows"].value == 1
    assert not result.asset_materializations_for_node("btc__minute_aggregates")  # never computed on bad data


def test_a_dump_dir_without_the_day_fails_with_the_dates(tmp_path):
    shutil.copy(DUMP_14, tmp_path / DUMP_14.name)
    source = TransactionSource(source="blockchair-dump", dump_dir=str(tmp_path))
    result = dg.materialize([raw_transactions], resources={"source": source, "lake": LakeResource(url=str(tmp_path / "lake"))},
                            tags=_range("2025-08-13-00:00", "2025-08-13-00:04"), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "2025-08-13" in failure.event_specific_data.error.message
