"""Esplora and Bitcoin Core verbose transactions onto the raw schema, checked on real 14 Aug rows."""

from __future__ import annotations

from datetime import datetime

import pytest

from btc_anomaly_assets.live.raw_mapping import MappingError, btc_to_sat, core_verbose_to_raw, esplora_to_raw, rows_to_raw_frame
from btc_anomaly_testing.fakes.mempool_space_server import esplora_tx, real_rows

SEEN = datetime(2026, 1, 2, 3, 4, 5, 678_000)
KEPT = ["hash", "size", "weight", "version", "lock_time", "is_coinbase", "has_witness", "input_count", "output_count",
        "input_total", "output_total", "fee"]


def test_esplora_rows_reproduce_the_real_transactions():
    rows = real_rows(300)
    mapped = [esplora_to_raw(esplora_tx(r), SEEN) for r in rows]
    for row, out in zip(rows, mapped):
        assert {k: out[k] for k in KEPT} == {k: (bool(row[k]) if isinstance(row[k], bool) else row[k]) for k in KEPT}
        assert out["block_id"] == -1 and out["time"] == SEEN
        # Blockchair's own fee rates, derived the same way from fee, size and weight
        assert out["fee_per_kb"] == pytest.approx(row["fee_per_kb"], rel=1e-3, abs=1e-3)
        assert out["fee_per_kwu"] == pytest.approx(row["fee_per_kwu"], rel=1e-3, abs=1e-3)
    frame = rows_to_raw_frame(mapped, where="test")
    assert len(frame) == 300 and set(frame["time_basis"]) == {"first_seen"}
    assert frame["minute"].iloc[0] == datetime(2026, 1, 2, 3, 4) and frame["cdd_total"].isna().all()


def test_esplora_coinbase_and_bad_objects():
    coinbase = next(r for r in real_rows(None, coinbase=True) if r["is_coinbase"])
    out = esplora_to_raw(esplora_tx(coinbase), SEEN)
    assert out["is_coinbase"] and out["fee"] == 0 and out["input_total"] == 0
    tx = esplora_tx(real_rows(1)[0])
    with pytest.raises(MappingError, match="fee"):
        esplora_to_raw({**tx, "fee": tx["fee"] + 1}, SEEN)
    broken = {**tx, "vin": [{**tx["vin"][0], "prevout": None}]}
    with pytest.raises(MappingError, match=r"vin\[0\].prevout"):
        esplora_to_raw(broken, SEEN)
    with pytest.raises(MappingError, match="txid"):
        esplora_to_raw({"vin": []}, SEEN)


def _core_verbose(row: dict) -> dict:
    from btc_anomaly_testing.fakes.bitcoin_core import build_transaction, verbose_json

    return verbose_json(build_transaction(row), row)


def test_core_verbose_maps_satoshi_exactly():
    for row in real_rows(50, offset=1000):
        tx = _core_verbose(row)
        out = core_verbose_to_raw(tx, SEEN)
        assert (out["input_total"], out["output_total"], out["fee"]) == (row["input_total"], row["output_total"], row["fee"])
        assert (out["input_count"], out["output_count"]) == (row["input_count"], row["output_count"])
        assert out["weight"] == tx["weight"] and out["size"] == tx["size"]
    with pytest.raises(MappingError, match="fee"):
        core_verbose_to_raw({**tx, "fee": "0.00000001"}, SEEN)
    with pytest.raises(MappingError, match="verbosity 2"):
        core_verbose_to_raw({**tx, "vin": [{k: v for k, v in tx["vin"][0].items() if k != "prevout"}]}, SEEN)


def test_btc_amounts_are_exact():
    assert btc_to_sat("0.00012345", what="x") == 12345
    assert btc_to_sat(20999999.9769, what="x") == 2099999997690000
    with pytest.raises(MappingError, match="whole"):
        btc_to_sat("0.000000001", what="x")
