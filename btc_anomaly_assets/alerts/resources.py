"""Where alerts go: a Slack incoming webhook, a bot token + channel, or (default) a local outbox."""

from __future__ import annotations

from typing import Optional

import dagster as dg
from pydantic import Field

from btc_anomaly_assets.common.schema import SEVERITIES


class AlertDestinationResource(dg.ConfigurableResource):
    """Slack destination chosen by configuration; secrets come from ``EnvVar`` and are never shown.

    ``SLACK_WEBHOOK_URL`` wins, then ``SLACK_BOT_TOKEN`` + ``SLACK_CHANNEL`` (through dagster-slack's
    ``SlackResource``), else JSON lines in ``BTC_ALERT_OUTBOX`` so the demo shows exactly what
    would have been posted. The fallback to the outbox is logged and recorded per alert.
    """

    webhook_url: Optional[str] = Field(default=None, description="Slack incoming-webhook URL (secret)")
    bot_token: Optional[str] = Field(default=None, description="Slack bot token with chat:write (secret)")
    channel: Optional[str] = Field(default=None, description="Channel for the bot token, e.g. #btc-alerts")
    outbox_path: str = Field(description="JSON-lines file used when no Slack destination is configured")
    ui_base_url: str = Field(default="http://localhost:3000", description="Dagster UI base URL for links in messages")
    min_severity: str = Field(default="medium", description="Lowest severity that is alerted")
    digest_threshold: int = Field(default=5, description="A run materializing more partitions than this gets one digest")
    deliver_in_run: bool = Field(
        default=True,
        description="Runs of at most digest_threshold minutes (live minutes) send their EWMA alerts from inside the "
                    "run, right after detection, instead of waiting for the sensor and an alert run",
    )

    def get_destination(self):
        from btc_anomaly_assets.alerts.slack_delivery import select_destination

        if self.min_severity not in SEVERITIES:
            raise dg.Failure(f"BTC_ALERT_MIN_SEVERITY={self.min_severity!r} is not one of {', '.join(SEVERITIES)}")
        client = None
        if self.bot_token and not self.webhook_url:
            from dagster_slack import SlackResource

            client = SlackResource(token=self.bot_token).get_client()
        return select_destination(
            webhook_url=self.webhook_url or None, web_client=client, channel=self.channel or None, outbox_path=self.outbox_path
        )
