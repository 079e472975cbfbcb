"""The Message Batches path (half price, for backfills): create a batch, poll it, collect its rows.

A batch that has not ended within ``batch_max_wait_seconds`` becomes a ``PendingBatch`` the caller
persists; the next run collects it. ``BatchPath`` is mixed into ``ClaudeRun`` and uses its budget,
cache and row helpers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

from btc_anomaly_assets.explain.claude_costs import TokenUsage, estimate_cost_usd
from btc_anomaly_assets.explain.claude_errors import ClaudeApiError

log = logging.getLogger("btc_anomaly_assets.explain.claude_explainer")

_BATCH_ERRORS_STORED_AS_FAILED = {"invalid_request_error"}



@dataclass
class PendingBatch:
    """A Message Batch created but not yet collected; persist ``to_json()`` and resume next run.

    ``evidences`` maps each request's ``custom_id`` (the explanation content hash) to the exact
    evidence sent, so collecting needs nothing else from the caller.
    """

    batch_id: str
    model_id: str
    prompt_version: str
    created_at: str
    evidences: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def content_hashes(self) -> set[str]:
        return set(self.evidences)

    def to_json(self) -> str:
        return json.dumps(
            {
                "batch_id": self.batch_id,
                "model_id": self.model_id,
                "prompt_version": self.prompt_version,
                "created_at": self.created_at,
                "evidences": self.evidences,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "PendingBatch":
        data = json.loads(text)
        missing = {"batch_id", "model_id", "prompt_version", "created_at", "evidences"} - set(data)
        if missing:
            raise ValueError(f"pending batch JSON is missing {sorted(missing)}")
        return cls(**data)


class BatchPath:
    """The batch half of ``ClaudeRun`` (see there for ``explainer``, ``stats``, ``_skip``, ``_row``...)."""


    def _explain_by_batch(self, todo: list[tuple[str, Mapping[str, Any]]]) -> Iterator[dict[str, Any]]:
        selected: dict[str, dict[str, Any]] = {}
        projected = 0
        for content_hash, evidence in todo:
            estimate = self.explainer.estimate_tokens(evidence, self.explainer.max_tokens)
            reason = self._refusal_reason(len(selected) + 1, projected + estimate)
            if reason:
                self._skip(reason)
                continue
            selected[content_hash] = dict(evidence)
            projected += estimate
        if not selected:
            return
        requests = [
            {"custom_id": content_hash, "params": self.explainer.request_params(evidence, self.explainer.max_tokens)}
            for content_hash, evidence in selected.items()
        ]
        batch = self.explainer._call(
            lambda: self.explainer._client.messages.batches.create(requests=requests), f"creating a batch of {len(requests)}"
        )
        self.stats.batches_created += 1
        self.stats.api_calls += len(requests)
        pending = PendingBatch(
            batch_id=batch.id,
            model_id=self.explainer.model_id,
            prompt_version=self.explainer.prompt_version,
            created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            evidences=selected,
        )
        self.pending_batches.append(pending)
        log.info("created Message Batch %s with %d requests", batch.id, len(requests))
        yield from self._collect(pending)

    def _collect(self, pending: PendingBatch) -> Iterator[dict[str, Any]]:
        """Poll a batch for at most ``batch_max_wait_seconds``; when ended, yield its rows."""
        x = self.explainer
        deadline = x._clock() + x.batch_max_wait_seconds
        while True:
            try:
                batch = x._call(lambda: x._client.messages.batches.retrieve(pending.batch_id), f"polling batch {pending.batch_id}")
            except ClaudeApiError as exc:
                if exc.status != 404:
                    raise
                self._drop(pending, "no longer exists (404)")
                return
            if batch.processing_status == "ended" and not batch.results_url:
                self._drop(pending, "ended without downloadable results (archived or expired)")
                return
            if batch.processing_status == "ended":
                break
            remaining = deadline - x._clock()
            if remaining <= 0:
                self.stats.batch_items_unfinished += len(pending.evidences)
                self.stats.note(f"batch {pending.batch_id} still {batch.processing_status}; resume it next run")
                log.info("batch %s still %s after %.0f s; left pending", pending.batch_id, batch.processing_status, x.batch_max_wait_seconds)
                return
            x._sleep(min(x.batch_poll_interval_seconds, remaining))
        results = x._call(lambda: list(x._client.messages.batches.results(pending.batch_id)), f"reading results of batch {pending.batch_id}")
        by_id = {r.custom_id: r for r in results}
        for content_hash, evidence in pending.evidences.items():
            if content_hash in self._done or self.is_cached(content_hash):
                continue
            entry = by_id.get(content_hash)
            row = self._row_from_batch_entry(pending, content_hash, evidence, entry)
            self._done.add(content_hash)
            if row is not None:
                yield row
        self.stats.batches_collected += 1
        self.pending_batches.remove(pending)

    def _drop(self, pending: PendingBatch, why: str) -> None:
        """Forget a batch whose results cannot be had; its items are not cached, so they are re-sent."""
        message = f"batch {pending.batch_id} {why}; its {len(pending.evidences)} items will be explained again"
        log.warning("%s", message)
        self.stats.note(message)
        self.stats.batch_items_unfinished += len(pending.evidences)
        self.pending_batches.remove(pending)

    def _row_from_batch_entry(
        self, pending: PendingBatch, content_hash: str, evidence: Mapping[str, Any], entry: Any
    ) -> dict[str, Any] | None:
        if entry is None:
            self.stats.batch_items_unfinished += 1
            self.stats.note(f"batch {pending.batch_id} returned no result for some requests; they are retried next run")
            return None
        kind = entry.result.type
        if kind == "succeeded":
            message = entry.result.message
            usage = TokenUsage.from_sdk(message.usage)
            cost = estimate_cost_usd(pending.model_id, usage, batch=True, prices=self.explainer.prices)
            self.stats.add_usage(usage.total_input, usage.output_tokens, cost)
            return self._answer_with_retry(
                evidence,
                content_hash,
                first=(message, usage, cost),
                batch_id=pending.batch_id,
                model_id=getattr(message, "model", None) or pending.model_id,
            )
        if kind == "errored":
            error = entry.result.error.error
            error_type, error_message = getattr(error, "type", "error"), getattr(error, "message", "")
            if error_type in _BATCH_ERRORS_STORED_AS_FAILED:
                return self._row(
                    evidence, content_hash, None,
                    self.explainer._redact(f"batch request errored: {error_type}: {error_message}"[:500]),
                    1, TokenUsage(), 0.0, pending.batch_id, pending.model_id,
                )
            self.stats.batch_items_unfinished += 1
            self.stats.note(f"batch {pending.batch_id}: {error_type} on some requests; they are retried next run")
            return None
        # expired or canceled: not billed, not answered; the next run sends them again.
        self.stats.batch_items_unfinished += 1
        self.stats.note(f"batch {pending.batch_id}: some requests {kind}; they are retried next run")
        return None
