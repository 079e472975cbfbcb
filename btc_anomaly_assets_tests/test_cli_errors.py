"""Configuration and argument errors: one line, naming the variable, the value and what is expected; exit 2.

And a failed run reports what failed and where its log is, never results of an earlier run.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import pytest

from btc_anomaly_assets.cli.main import main
from btc_anomaly_assets.cli.config_checks import VALUE_CHECKS, ConfigError, configuration_problems
from btc_anomaly_assets.common.settings import SETTINGS
from btc_anomaly_assets_tests.small_warehouse import build_small_warehouse

CONFIG_ERRORS = [
    ({"BTC_SOURCE": "nonsense"}, "BTC_SOURCE='nonsense'", "sample, blockchair, blockchair-dump, mempool-space, bitcoin-core"),
    ({"BTC_SOURCE": "bitcoin-core"}, "BTC_CORE_RPC_COOKIE", "needs RPC credentials"),
    ({"BTC_MEMPOOL_WS_URL": "https://mempool.space/api/v1/ws"}, "BTC_MEMPOOL_WS_URL='https://mempool.space/api/v1/ws'",
     "wss/ws URL"),
    ({"BTC_PARTITIONS_START": "2025-08-13"}, "BTC_PARTITIONS_START='2025-08-13'", "2025-08-13-00:00"),
    ({"BTC_PARTITIONS_END": "2025-08-12-00:00"}, "BTC_PARTITIONS_END (2025-08-12-00:00)", "must be after"),
    ({"BTC_PARTITIONS_START": "2015-01-01-00:00", "BTC_PARTITIONS_END": "none"}, "BTC_PARTITIONS_START=2015-01-01-00:00",
     "100,000"),
    ({"BTC_SOURCE": "blockchair-dump"}, "BTC_DUMP_DIR", "a folder of blockchair_bitcoin_transactions"),
    ({"BTC_SOURCE": "blockchair-dump", "BTC_DUMP_DIR": "/nonexistent/dumps"}, "BTC_DUMP_DIR='/nonexistent/dumps'", "not a folder"),
    ({"BTC_BLOCKCHAIR_MODE": "live"}, "BTC_BLOCKCHAIR_MODE='live'", "mempool, confirmed"),
    ({"BTC_ALERT_MIN_SEVERITY": "urgent"}, "BTC_ALERT_MIN_SEVERITY='urgent'", "info, low, medium, high"),
    ({"BTC_CLAUDE_MAX_CALLS_PER_RUN": "lots"}, "BTC_CLAUDE_MAX_CALLS_PER_RUN='lots'", "whole number"),
    ({"BTC_LIVE": "maybe"}, "BTC_LIVE='maybe'", "on/off"),
    ({"SPARK_REMOTE": "http://spark:15002"}, "SPARK_REMOTE='http://spark:15002'", "sc://host:15002"),
    ({"SPARK_MASTER": "local[two]"}, "SPARK_MASTER='local[two]'", "local[*]"),
    ({"BTC_DETECTION_MODE": "paranoid"}, "BTC_DETECTION_MODE='paranoid'", "default, seed_parity"),
    ({"SLACK_BOT_TOKEN": "xoxb-123-secret"}, "SLACK_CHANNEL", "SLACK_BOT_TOKEN is set"),
]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    monkeypatch.setenv("BTC_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


@pytest.mark.parametrize(("env", "names", "expects"), CONFIG_ERRORS, ids=[next(iter(e)) + "=" + next(iter(e.values())) for e, _, _ in CONFIG_ERRORS])
def test_configuration_error_is_one_line_exit_2(clean_env, capsys, env, names, expects):
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert main(["demo"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("btc-anomaly: error: ") and names in lines[0] and expects in lines[0], lines[0]
    assert "Traceback" not in err and "Materializing" not in out


def test_a_secret_is_never_echoed_in_its_error(clean_env, capsys):
    clean_env.setenv("SLACK_WEBHOOK_URL", "hooks.slack.com/services/T0/B0/sEcReT")
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "SLACK_WEBHOOK_URL" in err and "sEcReT" not in err and "hidden" in err


def test_every_problem_is_reported_not_only_the_first(clean_env):
    clean_env.setenv("BTC_LIVE", "maybe")
    clean_env.setenv("BTC_ALERT_MIN_SEVERITY", "urgent")
    assert {p.variable for p in configuration_problems()} == {"BTC_LIVE", "BTC_ALERT_MIN_SEVERITY"}


def test_defaults_are_valid_and_every_check_names_a_real_setting(clean_env):
    assert configuration_problems() == []
    assert set(VALUE_CHECKS) <= {s.name for s in SETTINGS}


def test_debug_shows_the_traceback(clean_env):
    clean_env.setenv("BTC_SOURCE", "nonsense")
    with pytest.raises(ConfigError, match="BTC_SOURCE"):
        main(["--debug", "demo"])


@pytest.mark.parametrize(("args", "expects"), [
    (["backfill", "2025-08-13-00:00", "2025-08-12-00:00"], "reversed: END 2025-08-12-00:00 is before START 2025-08-13-00:00"),
    (["backfill", "2025-08-13-00:00", "2025-08-13-00:00"], "is empty"),
    (["backfill", "2025-08-20-00:00", "2025-08-20-01:00"], "outside the minute partitions 2025-08-13-00:00 .. 2025-08-14-23:59"),
])
def test_range_errors_say_what_is_wrong(clean_env, capsys, args, expects):
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expects in lines[0], lines


def test_a_malformed_minute_is_one_argparse_line(clean_env, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["backfill", "2025-08-13", "2025-08-13-01:00"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'2025-08-13' is not a minute like 2025-08-13-00:00" in lines[0], lines


def _cli(env: dict, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in {s.name for s in SETTINGS}}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "btc_anomaly_assets.cli.main", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_installed_command_reports_a_bad_partition_start_before_dagster_imports(tmp_path):
    """The case that used to print a 20-line traceback: the partitions definition is built at import."""
    done = _cli({"BTC_DATA_DIR": str(tmp_path), "BTC_PARTITIONS_START": "2025-08-13"}, "demo")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "btc-anomaly: error: BTC_PARTITIONS_START='2025-08-13' is not a minute in the format '%Y-%m-%d-%H:%M' (UTC), "
        "e.g. 2025-08-13-00:00"]


def test_a_failed_run_reports_itself_and_nothing_of_earlier_runs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    build_small_warehouse(str(data / "warehouse.duckdb"))  # results "of an earlier run" inside the demo range
    (data / "alerts_outbox.jsonl").write_text('{"earlier": "alert"}\n')
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    with gzip.open(dumps / "blockchair_bitcoin_transactions_20250813.tsv.gz", "wt") as broken:
        broken.write("not\ta\tblockchair\tdump\n")
    done = _cli({"BTC_DATA_DIR": str(data), "BTC_SOURCE": "blockchair-dump", "BTC_DUMP_DIR": str(dumps),
                 "BTC_RUN_MODE": "in-process"}, "demo")  # the backfill path's failure notes: test_cli_launch.py
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "step btc__raw_transactions failed: DumpFormatError:" in out and "header lacks column(s)" in out
    run_line = next(line for line in out.splitlines() if line.startswith("Run "))
    assert "FAILED" in run_line
    run_id = run_line.split()[1]
    assert f"/runs/{run_id}" in out and f"DAGSTER_HOME={data / 'dagster_home'}" in out
    for earlier in ("What was found", "EWMA anomalies", "clusters", "explanations", "alerts", "forecast"):
        assert earlier not in out, out
    assert "Traceback" not in out + done.stderr and len((out + done.stderr).splitlines()) < 12, out + done.stderr
