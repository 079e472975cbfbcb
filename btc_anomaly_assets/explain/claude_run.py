"""One explanation run: the explanation cache, the per-run call cap, the daily token budget, the sync path."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Container, Iterable, Iterator, Mapping

from btc_anomaly_assets.explain.claude_batches import BatchPath, PendingBatch
from btc_anomaly_assets.explain.claude_costs import TokenUsage, estimate_cost_usd
from btc_anomaly_assets.explain.claude_errors import _BadAnswer
from btc_anomaly_assets.explain.prompt import STATUS_FAILED, RunStats, cache_lookup, explanation_row

if TYPE_CHECKING:
    from btc_anomaly_assets.explain.claude_explainer import ClaudeExplainer

log = logging.getLogger("btc_anomaly_assets.explain.claude_explainer")


class ClaudeRun(BatchPath):
    """One explanation run: cache, call cap, daily token budget, batches. Not thread-safe.

    Iterate ``explain(evidences)``; afterwards ``stats`` holds the counters for metadata and
    ``pending_batches`` the batches to persist for the next run (kept accurate while iterating,
    so a caller may persist it in a ``finally`` block even when the run raises).
    """

    def __init__(
        self,
        explainer: ClaudeExplainer,
        *,
        already_explained: Callable[[str], bool] | Container[str] | None,
        tokens_used_today: int,
        pending_batches: list[PendingBatch],
    ):
        if tokens_used_today < 0:
            raise ValueError(f"tokens_used_today must be >= 0, got {tokens_used_today}")
        self.explainer = explainer
        self.is_cached = cache_lookup(already_explained)
        self.tokens_used_today = int(tokens_used_today)
        self.pending_batches: list[PendingBatch] = list(pending_batches)
        self.max_calls: int | None = explainer.max_calls_per_run
        self.daily_token_budget: int | None = explainer.daily_token_budget
        self.stats = RunStats(source=explainer.source, model_id=explainer.model_id, prompt_version=explainer.prompt_version)
        for note in explainer.notes:
            self.stats.note(note)
        self._done: set[str] = set()
        self._retries_at_start = explainer.http_retries
        self._budget_logged: set[str] = set()

    # -- budgets -------------------------------------------------------------------------------

    def _tokens_spent(self) -> int:
        return self.tokens_used_today + self.stats.input_tokens + self.stats.output_tokens

    def _refusal_reason(self, extra_calls: int, extra_tokens: int) -> str | None:
        """'call_cap' / 'token_budget' when one more request must not be sent, else None."""
        if self.max_calls is not None and self.stats.api_calls + extra_calls > self.max_calls:
            return "call_cap"
        budget = self.daily_token_budget
        if budget is not None and self._tokens_spent() + extra_tokens > budget:
            return "token_budget"
        return None

    def _skip(self, reason: str) -> None:
        if reason == "call_cap":
            self.stats.skipped_call_cap += 1
            message = f"call cap reached ({self.max_calls} requests per run); remaining anomalies wait for the next run"
        else:
            self.stats.skipped_token_budget += 1
            message = (
                f"daily token budget reached ({self._tokens_spent():,} of {self.daily_token_budget:,} tokens); "
                "remaining anomalies wait for the next run"
            )
        if reason not in self._budget_logged:
            self._budget_logged.add(reason)
            log.warning("%s", message)
            self.stats.note(message)

    def _charge(self, usage: TokenUsage, cost: float | None, calls: int) -> None:
        self.stats.api_calls += calls
        self.stats.add_usage(usage.total_input, usage.output_tokens, cost)

    # -- main loop -----------------------------------------------------------------------------

    def explain(self, evidences: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield explanation rows: first from pending batches, then for the new evidences."""
        try:
            for pending in list(self.pending_batches):
                yield from self._collect(pending)
            in_flight = {h for p in self.pending_batches for h in p.content_hashes}
            todo: dict[str, Mapping[str, Any]] = {}  # keyed by content hash: repeats collapse
            for evidence in evidences:
                self.stats.candidates += 1
                content_hash = self.explainer.content_hash(evidence)
                if content_hash in self._done or content_hash in todo or self.is_cached(content_hash):
                    self.stats.cached += 1
                elif content_hash in in_flight:
                    self.stats.in_flight_batch += 1
                else:
                    todo[content_hash] = evidence
            threshold = self.explainer.batch_threshold
            if threshold is not None and self.explainer.batches_supported and len(todo) >= threshold:
                yield from self._explain_by_batch(list(todo.items()))
            else:
                for content_hash, evidence in todo.items():
                    reason = self._refusal_reason(1, self.explainer.estimate_tokens(evidence, self.explainer.max_tokens))
                    if reason:
                        self._skip(reason)
                        continue
                    row = self.explain_sync(evidence, content_hash)
                    if row is not None:
                        self._done.add(content_hash)
                        yield row
        finally:
            self.stats.http_retries = self.explainer.http_retries - self._retries_at_start

    def explain_sync(self, evidence: Mapping[str, Any], content_hash: str) -> dict[str, Any] | None:
        """One evidence through the Messages API: first attempt, then one retry with more room."""
        return self._answer_with_retry(evidence, content_hash, first=None)

    def _answer_with_retry(
        self,
        evidence: Mapping[str, Any],
        content_hash: str,
        *,
        first: tuple[Any, TokenUsage, float | None] | None,
        batch_id: str | None = None,
        model_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Shared by sync and batch paths; ``first`` is an answer already paid for (message, usage, cost)."""
        total_usage, total_cost, calls = TokenUsage(), 0.0, 0
        cost_known = True
        problems: list[str] = []
        attempts = [self.explainer.max_tokens, self.explainer.retry_max_tokens]
        for index, max_tokens in enumerate(attempts):
            if index == 0 and first is not None:
                message, usage, cost = first
            else:
                if index > 0:
                    reason = self._refusal_reason(1, self.explainer.estimate_tokens(evidence, max_tokens))
                    if reason:
                        # The first answer was billed but the retry cannot be paid for now: leave
                        # the item unexplained (no row) so the next run tries again.
                        self._skip(reason)
                        return None
                message = self.explainer._create_message(evidence, max_tokens)
                usage = TokenUsage.from_sdk(message.usage)
                cost = estimate_cost_usd(self.explainer.model_id, usage, prices=self.explainer.prices)
                self._charge(usage, cost, 1)
            calls += 1
            total_usage = total_usage + usage
            if cost is None:
                cost_known = False
            else:
                total_cost += cost
            try:
                answer = self.explainer.answer_from_message(message, max_tokens)
            except _BadAnswer as bad:
                problems.append(bad.reason)
                log.warning("explanation of %s: %s", evidence["anomaly_id"], bad.reason)
                if not bad.retry_with_more_room:
                    break
                continue
            return self._row(
                evidence, content_hash, answer, None, calls, total_usage, total_cost if cost_known else None,
                batch_id, getattr(message, "model", None) or model_id,
            )
        error = "; then ".join(problems) + f" ({calls} attempt{'s' if calls > 1 else ''})"
        return self._row(
            evidence, content_hash, None, error, calls, total_usage, total_cost if cost_known else None,
            batch_id, model_id,
        )

    def _row(
        self,
        evidence: Mapping[str, Any],
        content_hash: str,
        answer: Mapping[str, Any] | None,
        error: str | None,
        calls: int,
        usage: TokenUsage,
        cost: float | None,
        batch_id: str | None,
        model_id: str | None,
    ) -> dict[str, Any]:
        row = explanation_row(
            evidence,
            answer=answer,
            source=self.explainer.source,
            model_id=model_id or self.explainer.model_id,
            prompt_version=self.explainer.prompt_version,
            content_hash=content_hash,
            status="ok" if answer is not None else STATUS_FAILED,
            error=error,
            api_calls=calls,
            batch_id=batch_id,
            input_tokens=usage.total_input,
            output_tokens=usage.output_tokens,
            estimated_cost_usd=cost,
        )
        self.stats.add_row(row)
        return row
