"""Detector settings: the tutorial's exact rules (seed parity) or the default, and the cluster severity preset."""

from __future__ import annotations

import dagster as dg
from pydantic import Field


class DetectionSettings(dg.ConfigurableResource):
    """Which detection mode runs, and how CoinJoin / dust labels are graded.

    ``mode=seed_parity`` reproduces the tutorial exactly (EWMA alpha 0.3 with global sigma and
    |z| > 2; >= 2 transactions with >= 10 inputs or outputs per minute). ``label_preset`` is
    ``default``, ``compliance`` (mixing is a risk signal: medium) or ``privacy_research`` (mixing
    is not an alert: info).
    """

    mode: str = Field(default="default", description="default | seed_parity")
    label_preset: str = Field(default="default", description="default | compliance | privacy_research")
    priors: str = Field(default="builtin", description="builtin (the shipped table) | none (detection v1: warm-up, "
                                                         "members only, per-signature bursts) | path to a priors JSON")

    def _priors(self):
        from btc_anomaly_assets.detection.priors import PriorsError, builtin_priors, load_priors

        if self.priors == "builtin":
            return builtin_priors()
        if self.priors == "none":
            return None
        try:
            return load_priors(self.priors)
        except PriorsError as exc:
            raise dg.Failure(f"detection priors: {exc}") from None

    def ewma_config(self):
        from btc_anomaly_assets.detection.config import EwmaConfig

        config = EwmaConfig(mode=self.mode)
        return config.v1() if self.priors == "none" else EwmaConfig(mode=self.mode, priors=self._priors())

    def cluster_config(self):
        from btc_anomaly_assets.detection.config import LABEL_SEVERITY_PRESETS, ClusterConfig

        if self.label_preset not in LABEL_SEVERITY_PRESETS:
            raise dg.Failure(f"BTC_CLUSTER_SEVERITY_PRESET={self.label_preset!r} is not one of {', '.join(LABEL_SEVERITY_PRESETS)}")
        config = ClusterConfig(mode=self.mode, labels=LABEL_SEVERITY_PRESETS[self.label_preset])
        return config.v1() if self.priors == "none" else ClusterConfig(mode=self.mode, labels=config.labels,
                                                                        priors=self._priors())
