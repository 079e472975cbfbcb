"""Keeping secrets out of text: logs, errors, metadata, stored alert records.

One set of patterns for every client (Blockchair and Anthropic API keys, Slack webhooks and
tokens, passwords in URLs such as a Bitcoin Core RPC or PostgreSQL URL), plus the exact values
of the secrets a component holds (``Redactor(secret, ...)``), so a key that matches no pattern is
still blanked. ``RedactingFilter`` applies a redactor to every record of the loggers it is
installed on (third-party clients such as urllib3 and slack_sdk log request URLs at DEBUG).
"""

from __future__ import annotations

import logging
import re
from typing import Iterable
from urllib.parse import quote

REDACTED = "<redacted>"

# (pattern, replacement): the replacement keeps what helps a reader (which webhook, which scheme).
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(/services/[^/\s]+/[^/\s]+/)[^\s/?#'\"<>|)]+"), r"\1***"),  # Slack webhook secret
    (re.compile(r"\bxox[a-zA-Z]-[A-Za-z0-9-]+"), "xox*-***"),  # Slack bot/user tokens
    (re.compile(r"\bsk-ant-[A-Za-z0-9_-]+"), "sk-ant-***"),  # Anthropic keys
    (re.compile(r"([?&](?:key|api_key|apikey|token|password)=)[^&\s'\"]*", re.I), r"\1" + REDACTED),  # query secrets
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s'\"]*:)[^@/\s'\"]+(@)", re.I), r"\1" + REDACTED + r"\2"),  # user:pass@
)


def redact_secrets(text: str) -> str:
    """``text`` with every known kind of secret replaced (see the module docstring)."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    """Blanks the given secret values (raw and URL-encoded) and every known pattern out of text.

    The secrets live only inside this object; its ``repr`` does not show them.
    """

    def __init__(self, *secrets: str | None):
        forms: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= 4:  # a 1-3 character "secret" would blank ordinary text
                forms.update({secret, quote(secret, safe="")})
        self._forms = sorted(forms, key=len, reverse=True)

    def __repr__(self) -> str:
        return f"Redactor({len(self._forms)} secret form(s))"

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, REDACTED)
        return redact_secrets(text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message through a ``Redactor`` (args folded in, so nothing escapes)."""

    def __init__(self, redactor: Redactor | None = None):
        super().__init__()
        self.redactor = redactor or Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redactor(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def install_redaction(logger_names: Iterable[str], redactor: Redactor | None = None) -> None:
    """Put a ``RedactingFilter`` on each named logger once (a logger's filter does not see records
    propagated from its children, so each module that logs URLs is named)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter(redactor))
