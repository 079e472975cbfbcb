"""Live end to end: `btc-anomaly collect` (mempool-space) + `dagster dev` with BTC_LIVE=on, on loopback.

The fake mempool.space pushes real transactions in real time; the collector lands them; each
minute the live_minute sensor runs the whole graph over the landing zone; an injected whale reaches the
loopback Slack exactly once. Takes about 4 minutes (history backfill, dagster dev start-up, two
measured minutes); the runs aggregate on the suite's Spark Connect server.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_testing.live_scenario import run_live_session, utc_timestamp

pytestmark = pytest.mark.usefixtures("connect_server_launch")


def test_collector_and_dagster_dev_run_live_and_alert_the_whale_once(tmp_path, connect_server):
    # a generous drain: on a shared 2-core machine a live run can take minutes; the test judges outcomes, not speed.
    # The runs aggregate on the suite's Connect server, as a live deployment's runs share one.
    session = run_live_session(tmp_path, minutes=2, whale_every=2, history_minutes=32, spark="connect",
                               spark_remote=connect_server.remote, drain_seconds=900)
    first, last = session.measured[0], session.measured[-1]
    # minutes land: every transaction pushed during the measured minutes is in the landing zone, once
    begin, end = utc_timestamp(first), utc_timestamp(last + timedelta(minutes=1))
    pushed = {h for h, at in session.pushed_at.items() if begin + 1 <= at < end - 1}
    assert len(pushed) > 500 and pushed <= set(session.first_seen_minute), session.collector_log
    for h in pushed:  # counted in the minute it was first seen
        seen = datetime.fromtimestamp(session.pushed_at[h], timezone.utc).replace(tzinfo=None, second=0, microsecond=0)
        assert abs((session.first_seen_minute[h] - seen).total_seconds()) <= 60
    # the graph runs each minute
    assert all(run is not None and run.status == "SUCCESS" for run in session.live_runs.values()), session.live_runs
    assert all("btc/ewma_anomalies" in run.materialized for run in session.live_runs.values())
    # the injected whale reaches Slack, each of its alerts once (value and max-value anomalies are alerted apiece)
    assert list(session.whales) == [last]
    posts = session.whale_alerts[last]
    assert posts and all(n == 1 for n in posts), session.whale_alerts
    # ... and the message people receive names the whale's transaction
    sent = Warehouse(str(session.workdir / "data" / "warehouse.duckdb")).query(
        "SELECT text FROM btc.alerts WHERE status = 'sent' AND kind = 'single'")
    assert any(session.whales[last] in text for text in sent["text"]), list(sent["text"])
