"""btc/coordinated_clusters as an asset: its blocking check finds members that are not in the raw lake."""


import dagster as dg
import pytest

from btc_anomaly_assets.common.lake import write_raw_window
from btc_anomaly_assets.common.resources import LakeResource, WarehouseResource
from btc_anomaly_assets.detection import assets as detectors
from btc_anomaly_assets.detection.assets import coordinated_clusters
from btc_anomaly_assets.detection.resources import DetectionSettings
from btc_anomaly_testing.real_data import DAY13_WINDOW, raw_in, real_raw

RANGE = {"dagster/asset_partition_range_start": "2025-08-13-00:00", "dagster/asset_partition_range_end": "2025-08-13-02:59"}


@pytest.fixture
def resources(tmp_path):
    lake = LakeResource(url=str(tmp_path / "lake"))
    start, end = DAY13_WINDOW
    write_raw_window(lake.raw_transactions_path, raw_in(real_raw(), start, end), start, end)
    return {"lake": lake, "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")), "detection": DetectionSettings()}


def _check(result) -> dict:
    [evaluation] = result.get_asset_check_evaluations()
    return {"passed": evaluation.passed, **{k: v.value for k, v in evaluation.metadata.items()}}


def test_every_member_of_every_cluster_is_found_in_the_raw_lake(resources):
    result = dg.materialize([coordinated_clusters], resources=resources, tags=RANGE)
    check = _check(result)
    assert result.success and check["passed"] and check["missing_members"] == 0 and check["members_checked"] > 1_000


def test_a_member_missing_from_the_lake_fails_the_blocking_check(resources, monkeypatch):
    real_detector = detectors.detect_coordinated_clusters

    def detector_citing_an_unknown_transaction(*args, **kwargs):
        clusters = real_detector(*args, **kwargs)
        clusters.at[0, "member_hashes"] = [*clusters.at[0, "member_hashes"], "f" * 64]
        return clusters

    monkeypatch.setattr(detectors, "detect_coordinated_clusters", detector_citing_an_unknown_transaction)
    result = dg.materialize([coordinated_clusters], resources=resources, tags=RANGE, raise_on_error=False)
    check = _check(result)
    assert not result.success and not check["passed"]
    assert check["missing_members"] == 1 and "f" * 64 in check["first_missing"]
