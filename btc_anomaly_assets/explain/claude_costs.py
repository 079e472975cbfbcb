"""What Claude calls cost: list prices per model, token usage, and the estimated USD of a request."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

_DATED_SUFFIX = re.compile(r"-\d{8}$")



@dataclass(frozen=True)
class ModelPrice:
    """List price in USD per million tokens (base input, output)."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float


# An ESTIMATE from Anthropic's published list prices (standard tier, USD per million tokens).
# Prices change and discounts are not known here; the figures feed metadata, not billing.
MODEL_PRICES: dict[str, ModelPrice] = {
    "claude-haiku-4-5": ModelPrice(1.0, 5.0),
    "claude-sonnet-4-5": ModelPrice(3.0, 15.0),
    "claude-sonnet-4-6": ModelPrice(3.0, 15.0),
    "claude-opus-4-5": ModelPrice(5.0, 25.0),
    "claude-opus-4-6": ModelPrice(5.0, 25.0),
    "claude-sonnet-5": ModelPrice(2.0, 10.0),
}
BATCH_DISCOUNT = 0.5  # Message Batches bill at half price
CACHE_WRITE_MULTIPLIER = 1.25  # 5-minute prompt-cache writes
CACHE_READ_MULTIPLIER = 0.1


def price_for(model_id: str, prices: Mapping[str, ModelPrice] | None = None) -> ModelPrice | None:
    """The price of a model id, dated snapshots (``-20251001``) matching their alias."""
    table = prices if prices is not None else MODEL_PRICES
    return table.get(model_id) or table.get(_DATED_SUFFIX.sub("", model_id))


@dataclass
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def from_sdk(cls, usage: Any) -> "TokenUsage":
        return cls(
            input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            cache_creation_input_tokens=int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
            cache_read_input_tokens=int(getattr(usage, "cache_read_input_tokens", 0) or 0),
        )

    @property
    def total_input(self) -> int:
        """All input tokens billed: uncached + cache writes + cache reads."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def total(self) -> int:
        return self.total_input + self.output_tokens

    def __add__(self, other: "TokenUsage") -> "TokenUsage":
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )


def estimate_cost_usd(
    model_id: str,
    usage: TokenUsage,
    *,
    batch: bool = False,
    prices: Mapping[str, ModelPrice] | None = None,
) -> float | None:
    """Estimated USD cost of ``usage`` on ``model_id``; None when the model has no listed price."""
    price = price_for(model_id, prices)
    if price is None:
        return None
    input_units = (
        usage.input_tokens
        + usage.cache_creation_input_tokens * CACHE_WRITE_MULTIPLIER
        + usage.cache_read_input_tokens * CACHE_READ_MULTIPLIER
    )
    cost = (input_units * price.input_usd_per_mtok + usage.output_tokens * price.output_usd_per_mtok) / 1_000_000
    return round(cost * (BATCH_DISCOUNT if batch else 1.0), 8)
