"""A failed pipeline run is posted to the alert destination, with its error and a link to the run."""

import dagster as dg

from btc_anomaly_assets.alerts.destinations import read_outbox
from btc_anomaly_assets.alerts.resources import AlertDestinationResource
from btc_anomaly_assets.alerts.sensors import pipeline_failure_alert


@dg.op
def broken_step():
    raise RuntimeError("lake unreachable: s3://bucket/raw_transactions")


@dg.job
def failing_pipeline():
    broken_step()


def test_run_failure_is_posted_with_the_error(tmp_path):
    alerts = AlertDestinationResource(outbox_path=str(tmp_path / "outbox.jsonl"), ui_base_url="http://dagster.example:3000")
    with dg.instance_for_test() as instance:
        result = failing_pipeline.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        [record] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        failure = record.dagster_event
        context = dg.build_run_status_sensor_context(
            sensor_name=pipeline_failure_alert.name, dagster_instance=instance, dagster_run=result.dagster_run,
            dagster_event=failure, resources={"alerts": alerts},
        ).for_run_failure()
        pipeline_failure_alert(context)
    [line] = read_outbox(alerts.outbox_path)
    text = str(line["payload"])
    assert "failing_pipeline" in text and result.run_id in text
    assert "lake unreachable" in text and "broken_step" in text
    assert f"http://dagster.example:3000/runs/{result.run_id}" in text
