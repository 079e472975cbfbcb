"""The explainer: Claude through the official SDK when a key is set, else the labelled rule-based one."""

from __future__ import annotations

from typing import Optional

import dagster as dg
from pydantic import Field

DEFAULT_MODEL = "claude-haiku-4-5"


class ExplainerResource(dg.ConfigurableResource):
    """Builds the explainer for a run. ``ANTHROPIC_API_KEY`` comes through ``EnvVar`` and is never shown.

    With no key the deterministic rule-based explainer fills the same fields (``source = rules``);
    that fallback is logged and visible in every row and in the asset metadata.
    """

    api_key: Optional[str] = Field(default=None, description="Anthropic API key (secret)")
    model: str = Field(default=DEFAULT_MODEL, description="Claude model id; checked against the API at start-up")
    base_url: Optional[str] = Field(default=None, description="API base URL (tests point it at a loopback server)")
    min_severity: str = Field(default="medium", description="Lowest severity that gets an explanation")
    max_calls_per_run: int = Field(default=200, description="Cap on Messages API calls per run")
    daily_token_budget: int = Field(default=2_000_000, description="Input+output tokens allowed per UTC day")
    batch_threshold: int = Field(default=50, description="At or above this many items, use the Message Batches API")
    batch_max_wait_seconds: float = Field(default=120.0, description="How long a run waits for a batch before resuming later")
    batch_poll_interval_seconds: float = Field(default=30.0, description="Seconds between polls of a running batch")

    def build_degrading(self, cooling_off_until=None):
        """(explainer, None), or (rule-based explainer, why) when Claude is unavailable right now.

        Unavailable: a recent outage is still cooling off, or the start-up model check ran out of
        retries (429/5xx/529, timeouts) or hit a spend limit. A configuration error still fails.
        """
        from btc_anomaly_assets.explain.outage import outage_errors
        from btc_anomaly_assets.explain.rules import RuleExplainer

        if cooling_off_until is not None:
            return RuleExplainer(), f"Claude unavailable at the last attempt; not asked again before {cooling_off_until:%H:%M} UTC"
        try:
            return self.build(), None
        except outage_errors() as exc:
            return RuleExplainer(), f"Claude unavailable (start-up model check): {exc}"

    def build(self):
        from btc_anomaly_assets.explain.claude_explainer import ClaudeConfigError, make_explainer

        try:
            return make_explainer(
                self.api_key or None,
                model=self.model,
                base_url=self.base_url or None,
                max_calls_per_run=self.max_calls_per_run,
                daily_token_budget=self.daily_token_budget,
                batch_threshold=self.batch_threshold,
                batch_max_wait_seconds=self.batch_max_wait_seconds,
                batch_poll_interval_seconds=self.batch_poll_interval_seconds,
            )
        except ClaudeConfigError as exc:  # an unknown or retired model, a rejected key: say so plainly
            raise dg.Failure(description=f"Claude explainer cannot start: {exc}") from None
