"""``btc-anomaly``: run the graph over a range, print what it found, and point at the UI."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from datetime import datetime, timezone

from btc_anomaly_assets.common import settings
from btc_anomaly_assets.instance.dagster_yaml import prepare_dagster_home

SAMPLE_START = "2025-08-13-00:00"
SAMPLE_END = "2025-08-13-03:00"  # the bundled blocks span 00:00:57-02:58:11 UTC

def _parse_minute(value: str) -> str:
    try:
        datetime.strptime(value, settings.DATE_FMT)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a minute like 2025-08-13-00:00 (UTC)") from None
    return value


def run_range(start_key: str, end_key: str) -> int:
    """Materialize the whole graph over [start, end) as one single run; returns a process exit code."""
    home = prepare_dagster_home()
    import dagster as dg

    from btc_anomaly_assets.common.partitions import minute_partitions
    from btc_anomaly_assets.definitions import defs, pipeline_job

    last_key = minute_partitions.get_partition_key_for_timestamp(
        datetime.strptime(end_key, settings.DATE_FMT).replace(tzinfo=timezone.utc).timestamp() - 60
    )
    if not minute_partitions.has_partition_key(start_key) or not minute_partitions.has_partition_key(last_key):
        first, last = minute_partitions.get_first_partition_key(), minute_partitions.get_last_partition_key()
        print(f"error: [{start_key}, {end_key}) is outside the partitions {first} .. {last} "
              "(set BTC_PARTITIONS_START / BTC_PARTITIONS_END)", file=sys.stderr)
        return 2
    print(f"Materializing btc/* for [{start_key}, {end_key}) UTC as one run (source: {settings.env_value('BTC_SOURCE')})")
    began = time.monotonic()
    job = defs.resolve_job_def(pipeline_job.name)
    result = job.execute_in_process(
        instance=dg.DagsterInstance.get(),
        tags={"dagster/asset_partition_range_start": start_key, "dagster/asset_partition_range_end": last_key},
        raise_on_error=False,
        run_config=_quiet_logs(),
    )
    elapsed = time.monotonic() - began
    if result.success:
        deliver_alerts(defs, dg.DagsterInstance.get())
    from btc_anomaly_assets.cli.summary import print_summary

    print_summary(datetime.strptime(start_key, settings.DATE_FMT), datetime.strptime(end_key, settings.DATE_FMT))
    status = "succeeded" if result.success else "FAILED"
    print(f"\nRun {result.run_id} {status} in {elapsed:.1f} s.")
    print("Open it in the Dagster UI (same instance, same data):")
    print(f"  BTC_DATA_DIR={settings.data_dir()} DAGSTER_HOME={home} dagster dev -w workspace.yaml")
    return 0 if result.success else 1


def _quiet_logs() -> dict:
    """Console log level for in-process runs (the run's full log is in the instance, visible in the UI)."""
    return {"loggers": {"console": {"config": {"log_level": os.environ.get("BTC_LOG_LEVEL", "WARNING")}}}}


def deliver_alerts(defs, instance) -> None:
    """One tick of the alert sensor, and its alert runs, in this process (no daemon needed).

    The same sensor runs under ``dagster dev``; the delivery record makes the two agree, so an
    item alerted here is never alerted again there.
    """
    import dagster as dg

    from btc_anomaly_assets.alerts.sensors import anomaly_alert_sensor

    context = dg.build_sensor_context(instance=instance, resources=defs.resources)
    result = anomaly_alert_sensor(context)
    job = defs.resolve_job_def("send_anomaly_alert")
    for request in result.run_requests or []:
        job.execute_in_process(instance=instance, run_config={**request.run_config, **_quiet_logs()}, tags=request.tags,
                               raise_on_error=False)


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    from btc_anomaly_assets.dashboard.app import add_dashboard_arguments as add  # dash is slow to import

    add(parser)


def main(argv: list[str] | None = None) -> int:
    # Dagster marks backfill policies and pools as beta/preview; the CLI's reader needs the results, not that.
    warnings.filterwarnings("ignore", module="dagster")
    warnings.filterwarnings("ignore", category=UserWarning)
    parser = argparse.ArgumentParser(prog="btc-anomaly", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="materialize the whole graph over the bundled sample (13 Aug 2025, 00:00-03:00 UTC)")
    backfill = sub.add_parser("backfill", help="materialize the whole graph over [START, END) with the configured source")
    backfill.add_argument("start", type=_parse_minute, help="first minute, e.g. 2025-08-13-00:00 (UTC)")
    backfill.add_argument("end", type=_parse_minute, help="end minute, exclusive")
    sub.add_parser("config", help="print the configuration table (environment variables and current values)")
    from btc_anomaly_assets.dashboard.report import add_report_arguments, run_report

    add_report_arguments(sub.add_parser("report", help="write the tutorial's report CSVs from DuckDB"))
    add_dashboard_arguments(sub.add_parser("dashboard", help="serve the analyst's dashboard (Dash; reads DuckDB live)"))
    sub.add_parser("spark-connect-server", add_help=False,
                   help="run a local Spark Connect server from the installed pyspark until Ctrl-C (--port 15002)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "spark-connect-server":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    if args.command == "demo":
        if settings.env_value("BTC_SOURCE") != "sample":
            print(f"note: BTC_SOURCE={settings.env_value('BTC_SOURCE')}; the demo range is the bundled sample's hours")
        return run_range(SAMPLE_START, SAMPLE_END)
    if args.command == "backfill":
        return run_range(args.start, args.end)
    if args.command == "config":
        print(settings.config_table(with_current=True))
        return 0
    if args.command == "report":
        return run_report(args)
    if args.command == "dashboard":
        from btc_anomaly_assets.dashboard.app import run_dashboard

        return run_dashboard(args)
    if args.command == "spark-connect-server":
        from btc_anomaly_assets.aggregates.spark_session import main as spark_server_main

        spark_server_main(extra)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
