"""The shipped priors table: reproducible from the real blocks, holding the issue's measurements,
loaded with clear errors, and blended with history as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest

from btc_anomaly_assets.detection.clusters import classify_shapes
from btc_anomaly_assets.detection.derive_priors import to_json
from btc_anomaly_assets.detection.mass import unit_mass
from btc_anomaly_assets.detection.priors import (
    BUILTIN_PRIORS_FILE,
    PriorsError,
    builtin_priors,
    combine_sources,
    load_priors,
    prior_weight,
    source_of,
)
from btc_anomaly_assets.detection.units import build_units
from btc_anomaly_testing import real_data as rd
from btc_anomaly_testing.fixture_paths import DUMP_13, DUMP_14
from btc_anomaly_testing.real_priors import build_table


@pytest.fixture(scope="module")
def derived() -> dict:
    return build_table()


def test_the_shipped_table_is_what_the_real_blocks_give(derived):
    """Re-deriving from the in-repo excerpts reproduces the shipped file byte for byte."""
    assert to_json(derived) == BUILTIN_PRIORS_FILE.read_text()
    assert derived["source"]["blocks"] == sorted(rd.real_raw()["block_id"].unique().tolist())
    assert len(derived["source"]["blocks"]) == 31 and derived["bases"]["block"]["units"] == 31
    assert set(derived["source"]["files"]) == {DUMP_13.name, DUMP_14.name}


def test_the_table_holds_the_measured_real_ranges():
    """The issue's measurements on the 31 blocks: fan-outs take 0.6-21 % of a block's weight and
    create 161-5,934 outputs; consolidations take 1.5-75 % and consume 89-10,721 inputs; the
    largest group of identical non-dust transactions is 2-42 per block (median 12)."""
    priors = builtin_priors()
    fan_out = {e: priors.evidence("block", "fan_out_batch", e) for e in ("weight_share", "outputs")}
    fan_in = {e: priors.evidence("block", "fan_in_consolidation", e) for e in ("weight_share", "inputs")}
    assert 0.20 <= fan_out["weight_share"].high <= 0.21 and fan_out["outputs"].high == 5_934
    assert 0.75 <= fan_in["weight_share"].high <= 0.76 and fan_in["inputs"].high == 10_721
    largest = priors.evidence("block", "similar_burst", "largest_group")
    assert (largest.median, largest.high, largest.units) == (12, 42, 31)
    # The lower ends, measured here from the same blocks the table was derived from.
    raw = rd.real_raw()
    frame = raw[~raw["is_coinbase"]].reset_index(drop=True)
    shapes = classify_shapes(frame).to_numpy()
    units = build_units(frame, "block")
    masses = unit_mass(units.row_unit, units.unit_keys.size, frame, shapes, ["fan_out_batch", "fan_in_consolidation"])
    share = {p: masses.per_pattern[p]["weight"] / masses.unit_weight for p in masses.per_pattern}
    assert round(share["fan_out_batch"].min(), 3) == 0.006 and round(share["fan_in_consolidation"].min(), 3) == 0.015
    assert masses.per_pattern["fan_out_batch"]["outputs"].min() == 161
    assert masses.per_pattern["fan_in_consolidation"]["inputs"].min() == 89
    # EWMA starting levels exist for every metric of both time bases.
    for basis in ("block", "first_seen"):
        for metric in ("tx_count", "log10_max_value_btc", "log10_median_fee_rate_sat_vb", "fee_outlier_tx_count"):
            level = priors.metric(basis, metric)
            assert level is not None and np.isfinite(level.median) and level.scale > 0, (basis, metric)
    # First-seen units are minutes: far fewer fan-outs per unit than per block.
    assert priors.evidence("first_seen", "fan_out_batch", "members").median < 48 / 4


def test_a_bad_priors_file_is_named(tmp_path):
    with pytest.raises(PriorsError, match="does not exist"):
        load_priors(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PriorsError, match="bad.json is not valid JSON"):
        load_priors(bad)
    bad.write_text(json.dumps({"format": 99, "version": "x", "bases": {}}))
    with pytest.raises(PriorsError, match="format 99"):
        load_priors(bad)
    table = json.loads(BUILTIN_PRIORS_FILE.read_text())
    del table["bases"]["block"]["patterns"]["fan_out_batch"]["outputs"]["high"]
    bad.write_text(json.dumps(table))
    with pytest.raises(PriorsError, match=r"bases\.block\.patterns\.fan_out_batch\.outputs lacks \['high'\]"):
        load_priors(bad).evidence("block", "fan_out_batch", "outputs")


def test_the_prior_fades_as_history_grows():
    assert [prior_weight(n, 6) for n in (0, 3, 6, 20)] == [1.0, 0.5, 0.0, 0.0]
    assert [source_of(prior_weight(n, 6)) for n in (0, 3, 6)] == ["prior", "both", "history"]
    assert combine_sources("prior", "prior") == "prior" and combine_sources("history", None) == "history"
    assert combine_sources("prior", "history") == "both" and combine_sources(None) is None


def test_the_dagster_setting_picks_the_table(tmp_path):
    import dagster as dg

    from btc_anomaly_assets.detection.resources import DetectionSettings

    assert DetectionSettings().cluster_config().priors is builtin_priors()
    assert DetectionSettings().ewma_config().priors is builtin_priors()
    v1 = DetectionSettings(priors="none")
    assert v1.cluster_config().priors is None and v1.ewma_config().priors is None
    assert v1.cluster_config().similar_baseline == "signature" and not v1.cluster_config().mass_scoring
    own = tmp_path / "mine.json"
    own.write_text(BUILTIN_PRIORS_FILE.read_text())
    assert DetectionSettings(priors=str(own)).cluster_config().priors.where == str(own)
    with pytest.raises(dg.Failure, match="missing.json does not exist"):
        DetectionSettings(priors=str(tmp_path / "missing.json")).ewma_config()
