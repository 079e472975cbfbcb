"""Push-source transactions onto our raw schema (pure: one transaction object in, one row out).

Two shapes arrive:

- **esplora** (mempool.space's REST ``/api/tx/:txid``, ``/api/block/:hash/txs/:start`` and the
  ``added`` list of a ``mempool-transactions`` WebSocket push): amounts are integer satoshi,
  ``vin[].prevout.value`` carries each input's value (``prevout`` is null for a coinbase input),
  ``fee``, ``weight`` and ``size`` are given.
- **Bitcoin Core verbose** (``getrawtransaction <txid> 2``, and the entries of ``getblock <hash> 3``):
  amounts are BTC decimals, ``vin[].prevout.value`` (verbosity 2/3) and ``fee`` are given when Core
  knows the spent outputs; a coinbase input has ``coinbase`` instead of ``txid``.

Derived exactly as Blockchair defines its fields: ``input_total``/``output_total`` are the sums,
``fee`` is checked against ``input_total - output_total``, ``fee_per_kb = fee * 1000 / size`` and
``fee_per_kwu = fee * 1000 / weight``. Neither source has a price (the ``_usd`` columns are NULL) nor
the age of the spent coins (``cdd_total`` is NULL). ``block_id`` is -1 and ``time`` is the
collector's first-seen stamp: every row is counted in the minute it was first seen.
"""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal, InvalidOperation

import pandas as pd

from btc_anomaly_assets.common.schema import SATOSHI_PER_BTC, TIME_BASIS_FIRST_SEEN
from btc_anomaly_assets.ingest.raw_frames import empty_raw_frame, to_raw_frame

_NAN = math.nan


class MappingError(ValueError):
    """A transaction object that cannot become a raw row; the message names the txid and the field."""


def _txid(tx: dict, where: str) -> str:
    txid = tx.get("txid") if isinstance(tx, dict) else None
    if not isinstance(txid, str) or len(txid) != 64:
        raise MappingError(f"{where}: transaction without a 64-hex txid: {str(tx)[:120]}")
    return txid.lower()


def _int_field(tx: dict, name: str, txid: str, where: str) -> int:
    value = tx.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MappingError(f"{where}: tx {txid}: field {name!r} is {value!r}, expected a non-negative integer")
    return value


def btc_to_sat(value, *, what: str) -> int:
    """A Bitcoin Core BTC amount (JSON number, Decimal or string) as exact integer satoshi."""
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{what}: {value!r} is not an amount")
    try:
        sats = Decimal(str(value)) * SATOSHI_PER_BTC
    except InvalidOperation:
        raise MappingError(f"{what}: {value!r} is not an amount") from None
    if sats != sats.to_integral_value() or sats < 0:
        raise MappingError(f"{what}: {value!r} BTC is not a whole non-negative number of satoshi")
    return int(sats)


def _row(txid: str, first_seen: datetime, *, size: int, weight: int, version: int, lock_time: int, is_coinbase: bool,
         has_witness: bool, input_count: int, output_count: int, input_total: int, output_total: int, fee: int) -> dict:
    return {
        "block_id": -1, "hash": txid, "time": first_seen, "size": size, "weight": weight, "version": version,
        "lock_time": lock_time, "is_coinbase": is_coinbase, "has_witness": has_witness,
        "input_count": input_count, "output_count": output_count,
        "input_total": input_total, "input_total_usd": _NAN, "output_total": output_total, "output_total_usd": _NAN,
        "fee": fee, "fee_usd": _NAN,
        "fee_per_kb": fee * 1000.0 / size if size else 0.0, "fee_per_kb_usd": _NAN,
        "fee_per_kwu": fee * 1000.0 / weight if weight else 0.0, "fee_per_kwu_usd": _NAN,
        "cdd_total": _NAN,
    }


def esplora_to_raw(tx: dict, first_seen: datetime, *, where: str = "esplora") -> dict:
    """One esplora transaction (mempool.space) as a raw row first seen at ``first_seen`` (naive UTC)."""
    txid = _txid(tx, where)
    vin, vout = tx.get("vin"), tx.get("vout")
    if not isinstance(vin, list) or not vin or not isinstance(vout, list) or not vout:
        raise MappingError(f"{where}: tx {txid}: vin/vout missing or empty")
    is_coinbase = bool(vin[0].get("is_coinbase"))
    input_total = 0
    for index, entry in enumerate(vin):
        if entry.get("is_coinbase"):
            continue
        prevout = entry.get("prevout")
        if not isinstance(prevout, dict):
            raise MappingError(f"{where}: tx {txid}: vin[{index}].prevout is missing (input value unknown)")
        input_total += _int_field(prevout, "value", txid, f"{where} vin[{index}].prevout")
    output_total = sum(_int_field(out, "value", txid, f"{where} vout[{n}]") for n, out in enumerate(vout))
    fee = 0 if is_coinbase else _int_field(tx, "fee", txid, where)
    if not is_coinbase and fee != input_total - output_total:
        raise MappingError(f"{where}: tx {txid}: fee {fee} != inputs {input_total} - outputs {output_total}")
    return _row(
        txid, first_seen, size=_int_field(tx, "size", txid, where), weight=_int_field(tx, "weight", txid, where),
        version=int(tx.get("version", 0)), lock_time=int(tx.get("locktime", 0)), is_coinbase=is_coinbase,
        has_witness=any(entry.get("witness") for entry in vin), input_count=len(vin), output_count=len(vout),
        input_total=input_total, output_total=output_total, fee=fee,
    )


def core_verbose_to_raw(tx: dict, first_seen: datetime, *, where: str = "bitcoin-core") -> dict:
    """One ``getrawtransaction <txid> 2`` (or ``getblock 3`` entry) object as a raw row first seen at ``first_seen``."""
    txid = _txid(tx, where)
    vin, vout = tx.get("vin"), tx.get("vout")
    if not isinstance(vin, list) or not vin or not isinstance(vout, list) or not vout:
        raise MappingError(f"{where}: tx {txid}: vin/vout missing or empty")
    is_coinbase = "coinbase" in vin[0]
    input_total = 0
    if not is_coinbase:
        for index, entry in enumerate(vin):
            prevout = entry.get("prevout")
            if not isinstance(prevout, dict):
                raise MappingError(f"{where}: tx {txid}: vin[{index}].prevout is missing "
                                   "(ask with verbosity 2: getrawtransaction <txid> 2)")
            input_total += btc_to_sat(prevout.get("value"), what=f"{where}: tx {txid} vin[{index}].prevout.value")
    output_total = sum(btc_to_sat(out.get("value"), what=f"{where}: tx {txid} vout[{n}].value") for n, out in enumerate(vout))
    if is_coinbase:
        fee = 0
    else:
        fee = input_total - output_total
        if "fee" in tx and btc_to_sat(tx["fee"], what=f"{where}: tx {txid} fee") != fee:
            raise MappingError(f"{where}: tx {txid}: fee {tx['fee']} BTC != inputs {input_total} - outputs {output_total} sat")
        if fee < 0:
            raise MappingError(f"{where}: tx {txid}: outputs {output_total} exceed inputs {input_total}")
    witness = any(entry.get("txinwitness") for entry in vin) or str(tx.get("hash", txid)).lower() != txid
    return _row(
        txid, first_seen, size=_int_field(tx, "size", txid, where), weight=_int_field(tx, "weight", txid, where),
        version=int(tx.get("version", 0)), lock_time=int(tx.get("locktime", 0)), is_coinbase=is_coinbase,
        has_witness=witness, input_count=len(vin), output_count=len(vout),
        input_total=input_total, output_total=output_total, fee=fee,
    )


def rows_to_raw_frame(rows: list[dict], *, where: str) -> pd.DataFrame:
    """Mapped rows as a validated raw frame (RAW_TRANSACTION_COLUMNS, time basis ``first_seen``)."""
    if not rows:
        return empty_raw_frame()
    frame = pd.DataFrame(rows)
    frame["time"] = pd.to_datetime(frame["time"])
    return to_raw_frame(frame, time_basis=TIME_BASIS_FIRST_SEEN, where=where)
