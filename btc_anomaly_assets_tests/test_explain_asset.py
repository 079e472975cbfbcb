"""btc/anomaly_explanations as Dagster runs it, one explanation per incident, against the loopback Anthropic API
(healthy, and answering 529 to everything: the incidents get the labelled rule-based answer and
Claude's is owed until it is back)."""

import logging
from datetime import datetime

import dagster as dg
import pytest

from btc_anomaly_assets.aggregates.aggregates_sql import aggregate_minutes_duckdb
from btc_anomaly_assets.common.resources import WarehouseResource
from btc_anomaly_assets.common.schema import COORDINATED_CLUSTER_COLUMNS, EWMA_ANOMALY_COLUMNS, MINUTE_AGGREGATE_COLUMNS
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.detection.clusters import detect_coordinated_clusters
from btc_anomaly_assets.detection.ewma import detect_ewma_anomalies
from btc_anomaly_assets.explain.assets import anomaly_explanations
from btc_anomaly_assets.explain.outage import PENDING_TABLE
from btc_anomaly_assets.explain.resources import ExplainerResource
from btc_anomaly_assets.incidents.findings import findings_from_rows
from btc_anomaly_assets.incidents.model import INCIDENT_COLUMNS, build_incidents
from btc_anomaly_testing.fakes.anthropic_server import FAKE_API_KEY, FakeAnthropic, scripted_error, valid_answer
from btc_anomaly_testing.real_data import raw_in, real_raw

START, END = datetime(2025, 8, 13, 0, 0), datetime(2025, 8, 13, 3, 0)
TAGS = {"dagster/asset_partition_range_start": "2025-08-13-00:00", "dagster/asset_partition_range_end": "2025-08-13-02:59"}


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    """Real detector output for the sample hours, stored the way the detection assets store it."""
    path = str(tmp_path_factory.mktemp("wh") / "template.duckdb")
    raw = raw_in(real_raw(), START, END)
    wh = Warehouse(path)
    aggregates = aggregate_minutes_duckdb(raw, START, END)
    wh.replace_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS, aggregates, START, END)
    wh.replace_window("ewma_anomalies", EWMA_ANOMALY_COLUMNS, detect_ewma_anomalies(aggregates, START, END), START, END)
    wh.replace_window("coordinated_clusters", COORDINATED_CLUSTER_COLUMNS, detect_coordinated_clusters(raw, START, END), START, END)
    findings = findings_from_rows(wh.query("SELECT * FROM btc.ewma_anomalies").to_dict("records"),
                                  wh.query("SELECT * FROM btc.coordinated_clusters").to_dict("records"))
    wh.replace_window("incidents", INCIDENT_COLUMNS, build_incidents(findings, raw), START, END)
    flagged = wh.query("SELECT incident_id AS id FROM btc.incidents WHERE severity IN ('medium','high')")
    return path, sorted(flagged["id"])


def _resources(tmp_path, template, server, **explainer):
    path = tmp_path / "w.duckdb"
    path.write_bytes(open(template, "rb").read())
    return {
        "warehouse": WarehouseResource(path=str(path)),
        "explainer": ExplainerResource(api_key=FAKE_API_KEY, base_url=server.url, **explainer),
    }


def _message_calls(server) -> int:
    return sum(1 for r in server.requests if r.method == "POST" and r.path == "/v1/messages")


def test_every_flagged_item_gets_one_claude_explanation_and_a_rerun_makes_no_call(tmp_path, detected, caplog):
    template, flagged = detected
    assert len(flagged) >= 3
    fake = FakeAnthropic()
    with fake.serve() as server, caplog.at_level(logging.DEBUG):
        resources = _resources(tmp_path, template, server)
        first = dg.materialize([anomaly_explanations], resources=resources, tags=TAGS)
        calls_after_first = _message_calls(server)
        second = dg.materialize([anomaly_explanations], resources=resources, tags=TAGS)
        calls_after_second = _message_calls(server)
    assert first.success and second.success
    assert calls_after_first == len(flagged)
    assert calls_after_second == calls_after_first, "identical inputs must never be paid twice"

    rows = Warehouse(resources["warehouse"].path).query("SELECT * FROM btc.anomaly_explanations")
    assert sorted(rows["anomaly_id"]) == flagged
    assert set(rows["source"]) == {"claude"} and set(rows["status"]) == {"ok"}
    assert (rows["input_tokens"] > 0).all() and rows["model_id"].str.startswith("claude-haiku-4-5").all()

    prompt = str(fake.message_bodies[0])
    assert "BTC" in prompt and "sat/vB" in prompt and "block" in prompt
    # The 19,600 BTC whale's own hash is cited as a sample (taken from the raw lake).
    assert any("2d9ab70a" in str(body) for body in fake.message_bodies)

    check = next(e.event_specific_data for e in second.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION")
    assert check.passed and check.metadata["explained_ok"].value == len(flagged)
    metadata = second.asset_materializations_for_node("btc__anomaly_explanations")[0].metadata
    exposed = caplog.text + str(first.all_events) + str(second.all_events) + str(metadata) + rows.to_csv()
    assert FAKE_API_KEY not in exposed


def test_a_backfill_above_the_threshold_goes_through_one_batch(tmp_path, detected):
    template, flagged = detected
    fake = FakeAnthropic()
    with fake.serve() as server:
        resources = _resources(tmp_path, template, server, batch_threshold=2, batch_poll_interval_seconds=0.05,
                               batch_max_wait_seconds=10)
        assert dg.materialize([anomaly_explanations], resources=resources, tags=TAGS).success
    assert _message_calls(server) == 0 and len(fake.batches) == 1
    rows = Warehouse(resources["warehouse"].path).query("SELECT anomaly_id, batch_id, status FROM btc.anomaly_explanations")
    assert sorted(rows["anomaly_id"]) == flagged and rows["batch_id"].notna().all() and set(rows["status"]) == {"ok"}


def test_an_unknown_model_fails_the_run_with_a_clear_error(tmp_path, detected):
    template, _ = detected
    with FakeAnthropic().serve() as server:
        resources = _resources(tmp_path, template, server, model="claude-3-opus-20240229")
        result = dg.materialize([anomaly_explanations], resources=resources, tags=TAGS, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "claude-3-opus-20240229" in failure.event_specific_data.user_failure_data.description


def test_without_a_key_the_rules_explain_and_say_so(tmp_path, detected):
    template, flagged = detected
    path = tmp_path / "w.duckdb"
    path.write_bytes(open(template, "rb").read())
    resources = {"warehouse": WarehouseResource(path=str(path)), "explainer": ExplainerResource()}
    result = dg.materialize([anomaly_explanations], resources=resources, tags=TAGS)
    rows = Warehouse(str(path)).query("SELECT source, model_id, summary FROM btc.anomaly_explanations")
    assert result.success and len(rows) == len(flagged)
    assert set(rows["source"]) == {"rules"} and rows["summary"].str.contains("rule-based").all()
    metadata = result.asset_materializations_for_node("btc__anomaly_explanations")[0].metadata
    assert metadata["sources"].value == "rules"


def test_claude_at_529_degrades_to_labelled_rules_and_owes_claude_until_it_is_back(tmp_path, detected):
    template, flagged = detected
    fake = FakeAnthropic(outage_status=529, outage_retry_after="0")
    with fake.serve() as server:
        resources = _resources(tmp_path, template, server)
        down = dg.materialize([anomaly_explanations], resources=resources, tags=TAGS)
        wh = Warehouse(resources["warehouse"].path)
        rows = wh.query("SELECT anomaly_id, source, status, summary FROM btc.anomaly_explanations ORDER BY anomaly_id")
        owed = wh.query(f"SELECT anomaly_id, outage, attempts, reason FROM btc.{PENDING_TABLE} ORDER BY anomaly_id")
        assert down.success, "an explainer outage must never fail the run (and silence the alerts)"
        assert rows["anomaly_id"].tolist() == flagged and set(rows["source"]) == {"rules"} and set(rows["status"]) == {"ok"}
        assert rows["summary"].str.startswith("[rule-based]").all()
        assert owed["anomaly_id"].tolist() == flagged and owed["outage"].all() and (owed["attempts"] == 1).all()
        assert "529" in owed["reason"].iloc[0] and FAKE_API_KEY not in owed.to_csv()
        metadata = down.asset_materializations_for_node("btc__anomaly_explanations")[0].metadata
        assert "Claude unavailable" in metadata["claude_outage"].value
        assert not fake.message_bodies  # the model check failed: no explanation request was even sent

        fake.outage_status = None  # Claude is back, but the run right after the outage does not hammer it
        cooling = dg.materialize([anomaly_explanations], resources=resources, tags=TAGS)
        assert cooling.success and not fake.message_bodies
        with wh.connect() as con:  # the cool-off has passed
            con.execute(f"UPDATE btc.{PENDING_TABLE} SET last_attempt_at = last_attempt_at - INTERVAL 10 MINUTE")
        back = dg.materialize([anomaly_explanations], resources=resources, tags=TAGS)
    assert back.success and len(fake.message_bodies) == len(flagged)
    rows = wh.query("SELECT anomaly_id, source, status FROM btc.anomaly_explanations ORDER BY anomaly_id")
    assert rows["anomaly_id"].tolist() == flagged and set(rows["source"]) == {"claude"}
    assert wh.query(f"SELECT count(*) AS n FROM btc.{PENDING_TABLE}")["n"].iloc[0] == 0


def test_a_call_cap_leaves_labelled_rules_and_a_later_run_pays_what_is_owed(tmp_path, detected):
    template, flagged = detected
    fake = FakeAnthropic()
    with fake.serve() as server:
        resources = _resources(tmp_path, template, server)
        resources["explainer"] = ExplainerResource(api_key=FAKE_API_KEY, base_url=server.url, max_calls_per_run=1)
        capped = dg.materialize([anomaly_explanations], resources=resources, tags=TAGS)
        wh = Warehouse(resources["warehouse"].path)
        rows = wh.query("SELECT anomaly_id, source FROM btc.anomaly_explanations ORDER BY anomaly_id")
        owed = wh.query(f"SELECT anomaly_id, outage, reason FROM btc.{PENDING_TABLE}")
        assert capped.success and sorted(rows["source"]) == ["claude"] + ["rules"] * (len(flagged) - 1)
        assert len(owed) == len(flagged) - 1 and not owed["outage"].any() and "call cap" in owed["reason"].iloc[0]
        resources["explainer"] = ExplainerResource(api_key=FAKE_API_KEY, base_url=server.url)
        later = dg.materialize([anomaly_explanations], resources=resources, tags=TAGS)
    assert later.success and len(fake.message_bodies) == len(flagged)  # the owed ones, each asked once
    assert set(wh.query("SELECT source FROM btc.anomaly_explanations")["source"]) == {"claude"}
    assert wh.query(f"SELECT count(*) AS n FROM btc.{PENDING_TABLE}")["n"].iloc[0] == 0


def test_an_outage_in_the_middle_of_a_run_keeps_what_claude_answered_and_owes_the_rest(tmp_path, detected):
    template, flagged = detected
    fake = FakeAnthropic()
    fake.script_messages(valid_answer, *[scripted_error(529, "overloaded_error", "Overloaded", retry_after="0")] * 5)
    with fake.serve() as server:
        resources = _resources(tmp_path, template, server)
        result = dg.materialize([anomaly_explanations], resources=resources, tags=TAGS)
    wh = Warehouse(resources["warehouse"].path)
    rows = wh.query("SELECT anomaly_id, source FROM btc.anomaly_explanations ORDER BY minute")
    owed = wh.query(f"SELECT anomaly_id, outage FROM btc.{PENDING_TABLE} ORDER BY anomaly_id")
    assert result.success and rows["anomaly_id"].tolist() == flagged
    assert rows["source"].tolist() == ["claude"] + ["rules"] * (len(flagged) - 1)
    assert owed["anomaly_id"].tolist() == flagged[1:] and owed["outage"].all()
