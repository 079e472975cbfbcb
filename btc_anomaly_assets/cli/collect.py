"""``btc-anomaly collect [--seconds N]``: the long-running push collector (one per deployment).

Subscribes to ``BTC_SOURCE`` (``mempool-space`` or ``bitcoin-core``), stamps first-seen times and
writes the landing zone under ``<lake>/landing/<source>/``; ``raw_transactions`` reads it. Runs
beside ``dagster dev`` (or the daemon) until Ctrl-C / SIGTERM, or for ``--seconds`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from btc_anomaly_assets.common import settings
from btc_anomaly_assets.common.redaction import Redactor, install_redaction

LOGGERS = ("btc_anomaly_assets.live", "urllib3", "websockets")


def add_collect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=None, help="stop cleanly after N seconds (default: run until stopped)")


def build_feed(source: str, log: logging.Logger):
    env = settings.env_value
    if source == "mempool-space":
        from btc_anomaly_assets.live.mempool_space import MempoolSpaceFeed

        return MempoolSpaceFeed(env("BTC_MEMPOOL_WS_URL"), env("BTC_MEMPOOL_API_URL"), logger=log)
    from btc_anomaly_assets.live.bitcoin_core import BitcoinCoreFeed
    from btc_anomaly_assets.live.bitcoin_core_rpc import CoreRpc

    rpc = CoreRpc(env("BTC_CORE_RPC_URL"), user=env("BTC_CORE_RPC_USER"), password=env("BTC_CORE_RPC_PASSWORD"),
                  cookie_file=env("BTC_CORE_RPC_COOKIE"), logger=log)
    return BitcoinCoreFeed(env("BTC_CORE_ZMQ_URL"), rpc, logger=log)


def run_collect(args) -> int:
    from btc_anomaly_assets.ingest.resources import PUSH_SOURCES
    from btc_anomaly_assets.live.budget import live_budget_error

    source = settings.env_value("BTC_SOURCE")
    if source not in PUSH_SOURCES:
        hint = ""
        if source == "blockchair":
            hint = " " + (live_budget_error(has_key=bool(settings.env_value("BLOCKCHAIR_API_KEY"))) or
                          "(Blockchair is polled by the live runs themselves: no collector needed)")
        print(f"error: btc-anomaly collect needs a push source, BTC_SOURCE=mempool-space or bitcoin-core "
              f"(now {source!r}).{hint}", file=sys.stderr)
        return 2
    redactor = Redactor(settings.env_value("BTC_CORE_RPC_PASSWORD"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    install_redaction(LOGGERS, redactor)
    log = logging.getLogger("btc_anomaly_assets.live.collect")
    from btc_anomaly_assets.live.collector import Collector
    from btc_anomaly_assets.live.landing import LandingError, LandingZone

    try:
        landing = LandingZone(settings.lake_url(), source)
        collector = Collector(build_feed(source, log), landing, logger=log)
    except (ValueError, LandingError) as exc:
        print(f"error: {redactor(str(exc))}", file=sys.stderr)
        return 2
    log.info(f"collecting {source} into {landing.root}" + (f" for {args.seconds:g} s" if args.seconds else " until stopped"))

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, collector.stop)
        return await collector.run(args.seconds)

    try:
        figures = asyncio.run(main())
    except Exception as exc:  # noqa: BLE001 - one readable line, secrets redacted
        print(f"error: the collector stopped: {redactor(f'{type(exc).__name__}: {exc}')}", file=sys.stderr)
        return 1
    print(json.dumps({"source": source, **figures, "feed": getattr(collector.feed, "figures", {})}))
    return 0
