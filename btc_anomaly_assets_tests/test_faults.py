"""The fault table's cheap rows, in CI: each fault costs nothing and duplicates nothing.

Blockchair's cool-off errors are covered by the client's tests against the loopback Blockchair
(``test_ingest_blockchair_api.py``); ``benchmarks/faults.py`` runs them through the CLI too.
The real CLI runs as a subprocess (on the suite's Spark Connect server, so no JVM start per run)
over 2025-08-13 00:00-00:30 against loopback fakes; ``benchmarks/faults.py`` runs every row,
SIGKILL at each step included. A row here fails if the fault loses or duplicates anything, or
if the run's own recovery (pending alerts delivered later, torn files rewritten) stops working.
"""

from __future__ import annotations

import pytest

from btc_anomaly_testing import fault_scenarios as faults

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def spark_env(connect_server):
    return {"SPARK_REMOTE": connect_server.remote}


@pytest.fixture(scope="module")
def reference(root, spark_env):
    ref, census = faults.reference(root, env=spark_env)
    assert census.raw_rows > 5_000 and census.alerted_items, "the reference range must carry transactions and an alert"
    return ref, census


def _assert_clean(outcome):
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome.row() + "\n" + outcome.runs[-1].output[-3000:]
    assert outcome.runs[-1].returncode == 0, outcome.runs[-1].output[-3000:]


def test_slack_down_leaves_alerts_pending_and_a_later_tick_delivers_them_once(root, reference):
    outcome = faults.slack_down(root, *reference)
    _assert_clean(outcome)
    assert outcome.pending == 0 and outcome.delivered == outcome.expected_delivered > 0, outcome.row()
    assert any(note.startswith(tuple("123456789")) and "pending while down" in note for note in outcome.notes), outcome.notes


def test_a_torn_lake_file_is_rewritten_by_the_rerun(root, reference):
    _assert_clean(faults.corrupt_lake_file(root, *reference))


def test_a_full_disk_fails_the_run_without_half_written_files_and_the_rerun_completes(root, reference):
    try:
        outcome = faults.disk_full(root, *reference)
    except RuntimeError as exc:
        if "cannot mount" in str(exc):
            pytest.skip(str(exc))  # needs root for the tmpfs; .ci/run runs as root
        raise
    _assert_clean(outcome)
    assert outcome.runs[0].returncode != 0, "a 200 KB disk cannot hold the range's lake: the first run must fail"
    assert "0 unreadable file(s) while full" in outcome.notes[0], outcome.notes
