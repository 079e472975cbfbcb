"""Bitcoin Core JSON-RPC over HTTP: cookie or user/password auth, Core's error codes, retries.

Auth: the cookie file (``<datadir>/.cookie``, ``__cookie__:<hex>``, rewritten at each node start,
so it is read again after a 401), else user and password, else credentials in the URL. None of
them ever reaches a log, an error or metadata: every message goes through a ``Redactor`` holding
the password. Requests use JSON-RPC 1.0 framing, which every Core version answers; an error
reply (HTTP 404/500 with a JSON body, or 200 with ``error`` from Core 28+ under 2.0) becomes
``RpcError(code, message)``. A full work queue (503), a connection error or ``-28`` (warming up)
is retried with the project's backoff. Amounts are parsed as ``Decimal`` (no float rounding).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests

from btc_anomaly_assets.common.http_policy import backoff_seconds, is_retryable_status
from btc_anomaly_assets.common.redaction import Redactor

RPC_IN_WARMUP = -28
RPC_INVALID_ADDRESS_OR_KEY = -5  # also "transaction not in mempool / not found"
RPC_INVALID_PARAMETER = -8
RPC_METHOD_NOT_FOUND = -32601


class RpcError(RuntimeError):
    """An error Core answered (``code`` is Core's RPC error code) or a call that failed for good."""

    def __init__(self, message: str, code: int | None = None, method: str = ""):
        super().__init__(message)
        self.code, self.method = code, method


class CoreRpc:
    def __init__(self, url: str, *, user: str | None = None, password: str | None = None, cookie_file: str | None = None,
                 timeout: float = 15.0, max_attempts: int = 5, backoff_initial: float = 0.2, backoff_max: float = 10.0,
                 logger=None, sleep=time.sleep):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"BTC_CORE_RPC_URL must be http(s)://host:port, got {Redactor(password)(url)!r}")
        url_user, url_password = parts.username, parts.password
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.url = urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))
        self.cookie_file = cookie_file
        self._user, self._password = user or url_user, password or url_password
        self.redact = Redactor(self._password, url_password)
        self.timeout, self.max_attempts = timeout, max_attempts
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.sleep = sleep
        self.log = logger or logging.getLogger(__name__)
        self.session = requests.Session()
        self._ids = itertools.count(1)
        self.calls = 0
        if not cookie_file and not (self._user and self._password):
            raise ValueError("Bitcoin Core RPC needs BTC_CORE_RPC_COOKIE (the node's .cookie file) or "
                             "BTC_CORE_RPC_USER and BTC_CORE_RPC_PASSWORD")

    def __repr__(self) -> str:
        return f"CoreRpc({self.url!r})"

    def _auth(self) -> tuple[str, str]:
        if self.cookie_file:
            try:
                text = Path(self.cookie_file).read_text().strip()
            except OSError as exc:
                raise RpcError(f"cannot read the RPC cookie file {self.cookie_file}: {exc.strerror}") from None
            user, _, password = text.partition(":")
            if not password:
                raise RpcError(f"the RPC cookie file {self.cookie_file} is not user:password")
            self.redact = Redactor(password, self._password)
            return user, password
        return self._user, self._password

    def call(self, method: str, *params):
        for attempt in range(self.max_attempts):
            self.calls += 1
            body = {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}
            try:
                reply = self.session.post(self.url, data=json.dumps(body), auth=self._auth(), timeout=self.timeout,
                                          headers={"Content-Type": "application/json"})
            except requests.RequestException as exc:
                if attempt + 1 >= self.max_attempts:
                    raise RpcError(f"{method}: cannot reach {self.url}: {self.redact(str(exc))}", method=method) from None
                self._wait(attempt, method, "connection error")
                continue
            if reply.status_code == 401:
                raise RpcError(f"{method}: {self.url} refused the RPC credentials (HTTP 401; check BTC_CORE_RPC_COOKIE or "
                               "BTC_CORE_RPC_USER/BTC_CORE_RPC_PASSWORD)", method=method)
            try:
                data = json.loads(reply.text, parse_float=Decimal)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                if is_retryable_status(reply.status_code) and attempt + 1 < self.max_attempts:
                    self._wait(attempt, method, f"HTTP {reply.status_code}")
                    continue
                raise RpcError(f"{method}: HTTP {reply.status_code} {self.redact(reply.text[:200])!r}", method=method)
            error = data.get("error")
            if error:
                code = error.get("code")
                if code == RPC_IN_WARMUP and attempt + 1 < self.max_attempts:
                    self._wait(attempt, method, "node warming up")
                    continue
                raise RpcError(f"{method}: {self.redact(str(error.get('message')))} (code {code})", code=code, method=method)
            return data.get("result")
        raise RpcError(f"{method}: no attempt left", method=method)  # pragma: no cover

    def _wait(self, attempt: int, method: str, why: str) -> None:
        delay = backoff_seconds(attempt, initial=self.backoff_initial, maximum=self.backoff_max, jitter=0.5)
        self.log.warning(f"Bitcoin Core RPC {method}: {why}; retrying in {delay:.1f} s")
        self.sleep(delay)

    def close(self) -> None:
        self.session.close()
