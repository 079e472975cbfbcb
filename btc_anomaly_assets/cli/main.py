"""``btc-anomaly``: run the graph over a range, print what it found, and point at the UI."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from datetime import datetime, timedelta

from btc_anomaly_assets.common import settings
from btc_anomaly_assets.cli.config_checks import ConfigError, ConfigProblem, check_configuration
from btc_anomaly_assets.instance import recovery
from btc_anomaly_assets.instance.dagster_yaml import prepare_dagster_home

SAMPLE_START = "2025-08-13-00:00"
SAMPLE_END = "2025-08-13-03:00"  # the bundled blocks span 00:00:57-02:58:11 UTC

def _parse_minute(value: str) -> str:
    try:
        datetime.strptime(value, settings.DATE_FMT)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a minute like 2025-08-13-00:00 (UTC)") from None
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (what is wrong and where to look), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def range_problem(start_key: str, end_key: str) -> str | None:
    """Why [start, end) is not a range to run, in one sentence, or None."""
    start, end = (datetime.strptime(k, settings.DATE_FMT) for k in (start_key, end_key))
    if end < start:
        return (f"the range is reversed: END {end_key} is before START {start_key} "
                f"(the range is [START, END), e.g. btc-anomaly backfill {end_key} {start_key})")
    if end == start:
        return f"the range [{start_key}, {end_key}) is empty: END is exclusive, so END must be after START"
    from btc_anomaly_assets.common.partitions import minute_partitions

    last_key = (end - timedelta(minutes=1)).strftime(settings.DATE_FMT)
    if not minute_partitions.has_partition_key(start_key) or not minute_partitions.has_partition_key(last_key):
        first, last = minute_partitions.get_first_partition_key(), minute_partitions.get_last_partition_key()
        return (f"[{start_key}, {end_key}) is outside the minute partitions {first} .. {last} "
                "(set BTC_PARTITIONS_START / BTC_PARTITIONS_END)")
    return None


def run_range(start_key: str, end_key: str, title: str = "btc-anomaly backfill") -> int:
    """Materialize the whole graph over [start, end) as one single run; returns a process exit code.

    ``BTC_RUN_MODE=backfill`` (default) requests a Dagster backfill through the webserver, as the
    UI does (listed on Runs → Backfills); ``in-process`` runs the job in this process (no daemon,
    ~1 min sooner, no Backfills entry). The summary of what was found is printed only when the
    run succeeded: it reads the tables this run has just rewritten for the range. A failed run
    prints what failed and where its log is, and nothing from any earlier run.
    """
    from btc_anomaly_assets.common.utc import utc_now

    began_at = utc_now()
    home = prepare_dagster_home()
    recovery.recover_dead_runs()  # fail the runs a killed btc-anomaly left STARTED, free their pool slots
    last_key = (datetime.strptime(end_key, settings.DATE_FMT) - timedelta(minutes=1)).strftime(settings.DATE_FMT)
    print(f"Materializing btc/* for [{start_key}, {end_key}) UTC as one run (source: {settings.env_value('BTC_SOURCE')}, "
          f"BTC_RUN_MODE={settings.env_value('BTC_RUN_MODE')})")
    from btc_anomaly_assets.cli.launch import LaunchError, launch_range, ui_command

    if settings.env_value("BTC_RUN_MODE") == "in-process":
        success, run_id, elapsed, notes, head = _run_in_process(start_key, last_key)
    else:
        try:
            outcome = launch_range(start_key, last_key, title)
        except LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        success, run_id, elapsed, notes = outcome.success, outcome.run_id, outcome.elapsed, outcome.notes
        head = f"Backfill {outcome.backfill_id} ({outcome.status.lower()}), run {run_id}"
    open_ui = ui_command(home)
    if not success:
        for line in notes:
            print(line)
        print(f"\n{head} FAILED after {elapsed:.1f} s; nothing is reported for it (partitions it did not "
              "finish keep their previous contents). Its full log, in the Dagster UI:")
        print(f"  {open_ui}")
        print(f"  then {settings.env_value('BTC_DAGSTER_UI_URL').rstrip('/')}/runs/{run_id}")
        return 1
    from btc_anomaly_assets.cli.summary import print_summary

    print_summary(datetime.strptime(start_key, settings.DATE_FMT), datetime.strptime(end_key, settings.DATE_FMT), began_at)
    for line in notes:
        print(line)
    print(f"\n{head} succeeded in {elapsed:.1f} s.")
    print("Open it in the Dagster UI (same instance, same data):")
    print(f"  {open_ui}")
    return 0


def _run_in_process(start_key: str, last_key: str) -> tuple[bool, str, float, list[str], str]:
    """The whole job in this process (no webserver, no daemon); delivers its alerts in this process too."""
    import logging

    from btc_anomaly_assets.aggregates.resources import configured_pyspark_resource

    # The run's aggregation step needs a Spark session: start it now, on the core that importing
    # and loading the definitions and creating the run leave idle (the run adopts it).
    configured_pyspark_resource().start_in_background(logging.getLogger("btc_anomaly_assets.spark"))

    import dagster as dg

    from btc_anomaly_assets.cli.launch import check_notes
    from btc_anomaly_assets.definitions import defs, pipeline_job

    began = time.monotonic()
    job = defs.resolve_job_def(pipeline_job.name)
    try:
        with recovery.report_pool_waits():
            result = job.execute_in_process(
                instance=dg.DagsterInstance.get(),
                tags={"dagster/asset_partition_range_start": start_key, "dagster/asset_partition_range_end": last_key,
                      **recovery.launch_tags()},
                raise_on_error=False,
                run_config=_quiet_logs(),
            )
    finally:
        # A run that failed before its aggregation step leaves the session starting: let it finish
        # (a JVM stopped while creating its SparkContext prints a stack trace at exit).
        from btc_anomaly_assets.aggregates.spark_warmup import settle_all

        settle_all()
    elapsed = time.monotonic() - began
    if not result.success:
        return False, result.run_id, elapsed, failure_lines(result), f"Run {result.run_id}"
    deliver_alerts(defs, dg.DagsterInstance.get())
    return True, result.run_id, elapsed, check_notes(result.run_id), f"Run {result.run_id}"


def failure_lines(result, width: int = 400) -> list[str]:
    """One line per failed step: the step and its root error, class and message (the traceback is in the run's log)."""
    lines = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None and (error.cls_name or "").startswith("Dagster") and "Execution" in error.cls_name:
                error = error.cause  # Dagster's wrapper: report what the asset raised
            first = ((error.message or "").strip().splitlines() or ["no message"])[0]
            prefix, sep, rest = first.partition(": ")
            if sep and prefix.rsplit(".", 1)[-1] == error.cls_name:
                first = f"{error.cls_name}: {rest}"
            text = f"step {event.step_key} failed: {first}"
            lines.append(text if len(text) <= width else text[: width - 1] + "…")
    if not lines:
        lines.append("the run failed before any step ran (see its log)")
    return lines


def _quiet_logs() -> dict:
    """Console log level for in-process runs (the run's full log is in the instance, visible in the UI).

    CRITICAL by default: a failed step is reported by ``failure_lines`` in one line, not by
    Dagster's console logger printing its stack trace twice. ``BTC_LOG_LEVEL=WARNING`` shows more.
    """
    return {"loggers": {"console": {"config": {"log_level": settings.env_value("BTC_LOG_LEVEL").upper()}}}}


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
        job.execute_in_process(instance=instance, run_config={**request.run_config, **_quiet_logs()},
                               tags={**request.tags, **recovery.launch_tags()}, raise_on_error=False)


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    from btc_anomaly_assets.dashboard.app import add_dashboard_arguments as add  # dash is slow to import

    add(parser)


def main(argv: list[str] | None = None) -> int:
    # Dagster marks backfill policies and pools as beta/preview; the CLI's reader needs the results, not that.
    warnings.filterwarnings("ignore", module="dagster")
    warnings.filterwarnings("ignore", category=UserWarning)
    parser = OneLineParser(prog="btc-anomaly", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a configuration or argument error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    sub.add_parser("demo", help="materialize the whole graph over the bundled sample (13 Aug 2025, 00:00-03:00 UTC)")
    backfill = sub.add_parser("backfill", help="materialize the whole graph over [START, END) with the configured source")
    backfill.add_argument("start", type=_parse_minute, help="first minute, e.g. 2025-08-13-00:00 (UTC)")
    backfill.add_argument("end", type=_parse_minute, help="end minute, exclusive")
    sub.add_parser("config", help="print the configuration table (environment variables and current values)")
    from btc_anomaly_assets.dashboard.report import add_report_arguments

    add_report_arguments(sub.add_parser("report", help="write the tutorial's report CSVs from DuckDB"))
    add_dashboard_arguments(sub.add_parser("dashboard", help="serve the analyst's dashboard (Dash; reads DuckDB live)"))
    from btc_anomaly_assets.cli.collect import add_collect_arguments

    add_collect_arguments(sub.add_parser("collect", help="run the push collector (BTC_SOURCE=mempool-space|bitcoin-core) into the landing zone"))
    sub.add_parser("spark-class-archive",
                   help="write the Java class archive local Spark drivers start from (once per install; ~30 s)")
    sub.add_parser("spark-connect-server", add_help=False,
                   help="run a local Spark Connect server from the installed pyspark until Ctrl-C (--port 15002)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "spark-connect-server":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _run_command(args, extra)
    except ConfigError as exc:
        if args.debug:
            raise
        for problem in exc.problems:
            print(f"btc-anomaly: error: {problem}", file=sys.stderr)
        return 2


def _run_command(args: argparse.Namespace, extra: list[str]) -> int:
    if args.command == "config":
        print(settings.config_table(with_current=True))
        check_configuration()
        return 0
    if args.command == "spark-connect-server":
        from btc_anomaly_assets.aggregates.spark_session import main as spark_server_main

        spark_server_main(extra)
        return 0
    if args.command == "spark-class-archive":
        from btc_anomaly_assets.aggregates.spark_class_archive import main as class_archive_main

        return class_archive_main([])
    check_configuration()
    if args.command == "demo":
        if settings.env_value("BTC_SOURCE") != "sample":
            print(f"note: BTC_SOURCE={settings.env_value('BTC_SOURCE')}; the demo range is the bundled sample's hours")
        return _checked_range(SAMPLE_START, SAMPLE_END, "btc-anomaly demo")
    if args.command == "backfill":
        return _checked_range(args.start, args.end, f"btc-anomaly backfill {args.start} {args.end}")
    if args.command == "collect":
        from btc_anomaly_assets.cli.collect import run_collect

        return run_collect(args)
    if args.command == "report":
        from btc_anomaly_assets.dashboard.report import run_report

        return run_report(args)
    if args.command == "dashboard":
        from btc_anomaly_assets.dashboard.app import run_dashboard

        return run_dashboard(args)
    return 2


def _checked_range(start_key: str, end_key: str, title: str) -> int:
    problem = range_problem(start_key, end_key)
    if problem:
        raise ConfigError([ConfigProblem("range", problem)])
    return run_range(start_key, end_key, title)


if __name__ == "__main__":
    sys.exit(main())
