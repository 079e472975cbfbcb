"""The faults of the fault table, one function each: inject, let the user's next action happen, count.

Each takes a fresh folder and the clean reference (``reference()``) of the same range, and returns
an :class:`~btc_anomaly_testing.faults.Outcome`. The services are the loopback fakes (real
protocols, real error codes); the CLI runs as a subprocess pointed at them.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from btc_anomaly_testing.fakes.anthropic_server import FAKE_API_KEY, error_reply
from btc_anomaly_testing.fakes.blockchair_server import FakeBlockchair, load_dump_rows
from btc_anomaly_testing.fakes.loopback import LoopbackServer
from btc_anomaly_testing.fakes.slack_server import FakeSlack
from btc_anomaly_testing.faults import Census, Outcome, Scenario, compare
from btc_anomaly_testing.fixture_paths import DUMP_13

RANGE = ("2025-08-13-00:00", "2025-08-13-00:30")  # 4 blocks and the 19,609 BTC transfer at 00:18


def reference(root: Path, start: str = RANGE[0], end: str = RANGE[1], *, env: dict[str, str] | None = None
              ) -> tuple[Scenario, Census]:
    """The clean run every fault is compared with; ``env`` (e.g. SPARK_REMOTE) carries to every scenario."""
    clean = Scenario(root / "reference", start, end, env=env)
    record = clean.run("clean run")
    if record.returncode != 0:
        raise RuntimeError(f"the clean reference run failed:\n{record.output[-3000:]}")
    return clean, clean.census()


def _fresh(root: Path, name: str, ref: Scenario, **env) -> Scenario:
    return Scenario(root / name, ref.start, ref.end, env={**ref.env, **env})


def sigkill(root: Path, ref: Scenario, ref_census: Census, step: str) -> Outcome:
    scenario = _fresh(root, f"sigkill-{step}", ref)
    scenario.run_and_kill_at(step)
    scenario.run("re-run", timeout=300)
    return compare(f"SIGKILL in {step}", scenario, ref_census, scenario.census())


def claude_down(root: Path, ref: Scenario, ref_census: Census, status: int = 529) -> Outcome:
    kind = {529: "overloaded_error", 429: "rate_limit_error"}.get(status, "api_error")
    with LoopbackServer(lambda request: error_reply(status, kind, "Overloaded" if status == 529 else "down")) as server:
        scenario = _fresh(root, f"claude-{status}", ref, ANTHROPIC_API_KEY=FAKE_API_KEY,
                          BTC_CLAUDE_BASE_URL=server.url)
        scenario.run(f"run, Anthropic answering {status}")
        census = scenario.census()
    notes = [f"explanations by source: {dict(census.explanation_sources)}"]
    return compare(f"Claude down ({status} to every request)", scenario, ref_census, census, notes)


def slack_down(root: Path, ref: Scenario, ref_census: Census) -> Outcome:
    with FakeSlack() as slack:
        slack.queue_webhook(*["server_error"] * 200)
        scenario = _fresh(root, "slack-500", ref, SLACK_WEBHOOK_URL=slack.webhook_url)
        scenario.run("run, Slack answering 500")
        pending_while_down = scenario.census(delivered_texts=[m.text or "" for m in slack.received]).pending_alerts
        slack._webhook_script.clear()  # Slack is back
        scenario.deliver_pending()
        scenario.deliver_pending()  # a second tick must deliver nothing again
        census = scenario.census(delivered_texts=[m.text or "" for m in slack.received])
    return compare("Slack down (500), then back", scenario, ref_census, census,
                   [f"{pending_while_down} pending while down"])


def blockchair_cool_off(root: Path, ref: Scenario, ref_census: Census, code: int) -> Outcome:
    """The API blocks us (430) or is unavailable (503) for the first run, then recovers."""
    fake = FakeBlockchair(load_dump_rows(DUMP_13))
    fake.fail_next(code, times=10_000, retry_after="1")
    with fake.serve() as server:
        scenario = _fresh(root, f"blockchair-{code}", ref, BTC_SOURCE="blockchair", BTC_BLOCKCHAIR_MODE="confirmed",
                          BLOCKCHAIR_API_URL=server.url)
        scenario.run(f"run, Blockchair {code}")
        fake.faults.clear()
        scenario.run("re-run, API back")
        census = scenario.census()
    return compare(f"Blockchair {code}", scenario, ref_census, census)


def corrupt_lake_file(root: Path, ref: Scenario, ref_census: Census) -> Outcome:
    scenario = _fresh(root, "corrupt-lake", ref)
    scenario.copy_from(ref)
    victims = sorted((scenario.data_dir / "lake").rglob("*.parquet"), key=lambda p: p.stat().st_size)
    victim = victims[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a torn write: half a file, no footer
    first = scenario.run("re-run over a torn lake file")
    notes = [f"tore {victim.parent.name}/{victim.name}"]
    advice = re.search(r"btc-anomaly backfill (\d{4}-\d\d-\d\d-\d\d:\d\d) (\d{4}-\d\d-\d\d-\d\d:\d\d)", first.output)
    if first.returncode != 0 and advice:  # the error names the hour to rebuild: do what it says
        notes.append("the error named the hour to rebuild")
        scenario.run("the hour it named", over=(advice.group(1), advice.group(2)))
    quarantined = list((scenario.data_dir / "lake" / "quarantine").rglob("*.corrupt"))
    notes.append(f"{len(quarantined)} file(s) quarantined")
    return compare("corrupted lake file (half a Parquet file)", scenario, ref_census, scenario.census(),
                   notes)


def locked_duckdb(root: Path, ref: Scenario, ref_census: Census, hold_seconds: float = 20.0) -> Outcome:
    """Another process (say a DuckDB CLI left open) holds the warehouse file for a while."""
    scenario = _fresh(root, "locked-duckdb", ref)
    scenario.copy_from(ref)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); con.execute('SELECT 1'); "
        "print('locked', flush=True); time.sleep(float(sys.argv[2]))"),
        str(scenario.data_dir / "warehouse.duckdb"), str(hold_seconds)], stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    began = time.monotonic()
    first = scenario.run(f"run while another process holds DuckDB for {hold_seconds:.0f} s")
    holder.wait()
    notes = [f"first run {'waited and succeeded' if first.returncode == 0 else 'failed'} "
             f"after {time.monotonic() - began:.0f} s"]
    if first.returncode != 0:
        scenario.run("re-run, lock released")
    return compare("locked DuckDB file", scenario, ref_census, scenario.census(), notes)


@contextlib.contextmanager
def _small_disk(folder: Path, size: str):
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        raise RuntimeError(f"cannot mount a {size} tmpfs on {folder} (needs root): {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def disk_full(root: Path, ref: Scenario, ref_census: Census, size: str = "200k") -> Outcome:
    """The lake's disk fills up mid-run (a tmpfs of ``size``); space is freed and the range re-run."""
    scenario = _fresh(root, "disk-full", ref)
    lake = scenario.data_dir / "lake"
    kept = scenario.root / "lake-while-full"
    with _small_disk(lake, size):
        first = scenario.run(f"run on a {size} disk")
        half_written = scenario.census().unreadable_files
        shutil.copytree(lake, kept)  # freeing space keeps what was written
    shutil.rmtree(lake)
    shutil.copytree(kept, lake)
    scenario.run("re-run, space freed")
    notes = [f"first run {'failed' if first.returncode else 'succeeded'}; "
             f"{len(half_written)} unreadable file(s) while full"]
    return compare("disk full while writing the lake", scenario, ref_census, scenario.census(), notes)
