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


def collector_disconnect(root: Path, pushed: int = 360, outage_seconds: float = 3.0) -> Outcome:
    """`btc-anomaly collect` against the loopback mempool.space: the feed drops mid-stream and
    refuses reconnects for a while, transactions keep arriving (some mined) while it is down;
    then the collector reconnects and re-fills the gap over REST. Counted: every pushed
    transaction landed exactly once, and the gap is recorded as data."""
    import json as _json
    import os
    from datetime import timedelta

    from btc_anomaly_assets.common.settings import SETTINGS
    from btc_anomaly_assets.common.utc import utc_now
    from btc_anomaly_assets.live.landing import landing_root, read_landing_window, read_state
    from btc_anomaly_testing.fakes.mempool_space_server import FakeMempoolSpace, esplora_tx, real_rows
    from btc_anomaly_testing.faults import RunRecord

    txs = [esplora_tx(r) for r in real_rows(pushed, offset=3000)]
    third = pushed // 3
    data = root / "collector-disconnect"
    data.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {s.name for s in SETTINGS}}
    began = time.monotonic()
    with FakeMempoolSpace() as fake:
        env.update(BTC_SOURCE="mempool-space", BTC_MEMPOOL_WS_URL=fake.ws_url, BTC_MEMPOOL_API_URL=fake.api_url,
                   BTC_DATA_DIR=str(data))
        process = subprocess.Popen([sys.executable, "-m", "btc_anomaly_assets.cli.main", "collect", "--seconds", "40"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait(lambda: fake.subscribers() == 1, 90, "the collector's subscription")
        for i in range(0, third, 20):
            fake.push(added=txs[i:i + 20])
        time.sleep(1.0)
        fake.refuse_connections(True)
        fake.drop_connections()
        fake.push(added=txs[third:2 * third])  # while the collector is away
        fake.mine([t["txid"] for t in txs[third:third + third // 2]])
        time.sleep(outage_seconds)
        fake.refuse_connections(False)
        _wait(lambda: fake.subscribers() == 1, 60, "the collector's reconnect")
        for i in range(2 * third, pushed, 20):
            fake.push(added=txs[i:i + 20])
        fake.push(added=txs[:5])  # already seen: must not land twice
        out, err = process.communicate(timeout=120)
    record = RunRecord("collect 40 s, feed dropped and refused for "
                       f"{outage_seconds:.0f} s", process.returncode, time.monotonic() - began, out + err)
    now = utc_now()
    lake = str(data / "lake")
    landed = list(read_landing_window(lake, "mempool-space", now - timedelta(minutes=15), now + timedelta(minutes=2),
                                      now).frame["hash"])
    expected = {t["txid"] for t in txs}
    gaps = read_state(landing_root(lake, "mempool-space"), "mempool-space").gaps
    reasons = sorted({g.reason for g in gaps})
    try:
        figures = _json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        figures = {}
    notes = [f"{len(gaps)} gap(s) recorded ({', '.join(reasons)})", f"landed {len(set(landed))} of {len(expected)}",
             f"collector figures: {figures}" if figures else "no figures line"]
    lost = len(expected - set(landed))
    duplicated = len(landed) - len(set(landed))
    return Outcome("collector disconnect (WebSocket dropped, reconnects refused)", [record], lost, duplicated, 0, 0, 0,
                   notes)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
