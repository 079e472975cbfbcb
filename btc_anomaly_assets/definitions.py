"""The project's table of contents: every asset, check, job, sensor and resource."""

from __future__ import annotations

import dagster as dg

from btc_anomaly_assets.aggregates.assets import minute_aggregates
from btc_anomaly_assets.aggregates.resources import configured_pyspark_resource
from btc_anomaly_assets.alerts.resources import AlertDestinationResource
from btc_anomaly_assets.alerts.sensors import anomaly_alert_sensor, pipeline_failure_alert, send_anomaly_alert
from btc_anomaly_assets.common import settings
from btc_anomaly_assets.common.resources import LakeResource, WarehouseResource
from btc_anomaly_assets.detection.assets import coordinated_clusters, ewma_anomalies
from btc_anomaly_assets.detection.resources import DetectionSettings
from btc_anomaly_assets.explain.assets import anomaly_explanations
from btc_anomaly_assets.explain.resources import ExplainerResource
from btc_anomaly_assets.forecast.assets import transaction_forecast
from btc_anomaly_assets.incidents.assets import incidents
from btc_anomaly_assets.incidents.resources import IncidentSettings
from btc_anomaly_assets.ingest.assets import raw_transactions
from btc_anomaly_assets.ingest.resources import TransactionSource
from btc_anomaly_assets.live.schedules import build_live_automation

env = settings.env_or_default


def build_resources() -> dict:
    """Resources from the environment (``EnvVar`` where set, documented defaults otherwise)."""
    return {
        "source": TransactionSource(
            source=env("BTC_SOURCE"),
            dump_dir=env("BTC_DUMP_DIR"),
            api_url=env("BLOCKCHAIR_API_URL"),
            api_key=env("BLOCKCHAIR_API_KEY"),
            blockchair_mode=env("BTC_BLOCKCHAIR_MODE"),
        ),
        "lake": LakeResource(url=settings.lake_url()),
        "warehouse": WarehouseResource(path=settings.duckdb_path()),
        "detection": DetectionSettings(mode=env("BTC_DETECTION_MODE"), label_preset=env("BTC_CLUSTER_SEVERITY_PRESET"),
                                       priors=env("BTC_DETECTION_PRIORS")),
        "explainer": ExplainerResource(
            api_key=env("ANTHROPIC_API_KEY"),
            model=env("BTC_CLAUDE_MODEL"),
            base_url=env("BTC_CLAUDE_BASE_URL"),
            min_severity=env("BTC_EXPLAIN_MIN_SEVERITY"),
            max_calls_per_run=int(settings.env_value("BTC_CLAUDE_MAX_CALLS_PER_RUN")),
            daily_token_budget=int(settings.env_value("BTC_CLAUDE_DAILY_TOKEN_BUDGET")),
            batch_threshold=int(settings.env_value("BTC_CLAUDE_BATCH_THRESHOLD")),
        ),
        "incident_settings": IncidentSettings(explorer_url=env("BTC_EXPLORER_URL")),
        "alerts": AlertDestinationResource(
            webhook_url=env("SLACK_WEBHOOK_URL"),
            bot_token=env("SLACK_BOT_TOKEN"),
            channel=env("SLACK_CHANNEL"),
            outbox_path=env("BTC_ALERT_OUTBOX") or settings.alert_outbox(),
            ui_base_url=env("BTC_DAGSTER_UI_URL"),
            min_severity=env("BTC_ALERT_MIN_SEVERITY"),
            deliver_in_run=settings.is_on("BTC_ALERT_IN_RUN"),
        ),
        "pyspark": configured_pyspark_resource(),
    }


ALL_ASSETS = [raw_transactions, minute_aggregates, ewma_anomalies, coordinated_clusters, transaction_forecast, incidents,
              anomaly_explanations]

pipeline_job = dg.define_asset_job(
    "btc_pipeline",
    selection=dg.AssetSelection.assets(*ALL_ASSETS),
    description="The whole minute-partitioned graph; launched over a range it is one single run.",
    executor_def=dg.in_process_executor,
)

LIVE_SENSORS = build_live_automation(pipeline_job)

defs = dg.Definitions(
    assets=ALL_ASSETS,
    # Runs launched from an asset page use the implicit asset job: keep its steps in one process,
    # like btc_pipeline (a subprocess per small step costs seconds each).
    executor=dg.in_process_executor,
    jobs=[pipeline_job, send_anomaly_alert],
    sensors=[anomaly_alert_sensor, pipeline_failure_alert, *LIVE_SENSORS],
    resources=build_resources(),
)
