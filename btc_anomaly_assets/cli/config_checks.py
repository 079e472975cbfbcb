"""Every ``BTC_*`` / service setting checked before Dagster starts, each problem as one sentence.

``configuration_problems()`` reads the environment through ``settings.env_value`` (so the same
defaults apply) and returns one :class:`ConfigProblem` per wrong value: the variable, the value
(masked for secrets) and what is expected. The CLI prints them one per line and exits 2; nothing
here imports Dagster's definitions, so a bad partitions range is reported before the partitions
definition that would choke on it is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from btc_anomaly_assets.common import settings
from btc_anomaly_assets.common.partition_range import configured_end, configured_start, partition_bounds
from btc_anomaly_assets.common.schema import SEVERITIES


@dataclass(frozen=True)
class ConfigProblem:
    variable: str
    message: str

    def __str__(self) -> str:
        return self.message


class ConfigError(ValueError):
    """One or more settings are wrong; ``problems`` holds one sentence each."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def shown(name: str, value: str) -> str:
    """How a value appears in an error: secrets never, everything else quoted."""
    return "(a value, hidden: it is a secret)" if settings.setting(name).secret else repr(value)


def _one_of(choices: tuple[str, ...] | Callable[[], tuple[str, ...]], what: str):
    def check(name: str, value: str) -> str | None:
        allowed = choices() if callable(choices) else choices
        if value in allowed:
            return None
        return f"{name}={shown(name, value)} is not {what}; expected one of: {', '.join(allowed)}"
    return check


def _whole_number(minimum: int):
    def check(name: str, value: str) -> str | None:
        if re.fullmatch(r"\d+", value) and int(value) >= minimum:
            return None
        return f"{name}={shown(name, value)} is not a whole number >= {minimum}"
    return check


def _http_url(name: str, value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    return f"{name}={shown(name, value)} is not an http(s) URL like https://host/path"


def _url_with(schemes: tuple[str, ...], example: str):
    def check(name: str, value: str) -> str | None:
        parts = urlsplit(value)
        if parts.scheme in schemes and parts.netloc:
            return None
        return f"{name}={shown(name, value)} is not a {'/'.join(schemes)} URL like {example}"
    return check


def _on_off(name: str, value: str) -> str | None:
    try:
        settings.is_on(name)
    except ValueError as exc:
        return str(exc)
    return None


def _spark_remote(name: str, value: str) -> str | None:
    if value.startswith("sc://") and urlsplit(value.split(";")[0]).netloc:
        return None
    return f"{name}={value!r} is not a Spark Connect URL; expected sc://host:15002 (optionally ;token=…)"


def _spark_master(name: str, value: str) -> str | None:
    if re.fullmatch(r"local(\[(\*|\d+)(,\d+)?\])?|yarn|(spark|mesos|k8s)://\S+", value):
        return None
    return f"{name}={value!r} is not a Spark master; expected local[*], local[N], spark://host:7077, yarn or k8s://…"


def _memory(name: str, value: str) -> str | None:
    if re.fullmatch(r"\d+[kmgt]?", value.lower()):
        return None
    return f"{name}={value!r} is not a JVM memory size; expected e.g. 512m or 2g"


def _priors(name: str, value: str) -> str | None:
    if value in ("builtin", "none") or Path(value).expanduser().is_file():
        return None
    return f"{name}={value!r} is not builtin, none or an existing priors JSON file"


def _sources() -> tuple[str, ...]:
    from btc_anomaly_assets.ingest.resources import SOURCES

    return tuple(SOURCES)


def _detection_modes() -> tuple[str, ...]:
    from btc_anomaly_assets.detection.config import MODES

    return tuple(MODES)


def _label_presets() -> tuple[str, ...]:
    from btc_anomaly_assets.detection.config import LABEL_SEVERITY_PRESETS

    return tuple(LABEL_SEVERITY_PRESETS)


_LOG_LEVEL = _one_of(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "a log level")

VALUE_CHECKS: dict[str, Callable[[str, str], str | None]] = {
    "BTC_SOURCE": _one_of(_sources, "a transaction source"),
    "BTC_BLOCKCHAIR_MODE": _one_of(("mempool", "confirmed"), "a Blockchair mode"),
    "BLOCKCHAIR_API_URL": _http_url,
    "BTC_MEMPOOL_WS_URL": _url_with(("wss", "ws"), "wss://mempool.space/api/v1/ws"),
    "BTC_MEMPOOL_API_URL": _http_url,
    "BTC_CORE_ZMQ_URL": _url_with(("tcp", "ipc"), "tcp://127.0.0.1:28332"),
    "BTC_CORE_RPC_URL": _http_url,
    "SPARK_REMOTE": _spark_remote,
    "SPARK_MASTER": _spark_master,
    "SPARK_DRIVER_MEMORY": _memory,
    "BTC_DETECTION_MODE": _one_of(_detection_modes, "a detection mode"),
    "BTC_DETECTION_PRIORS": _priors,
    "BTC_CLUSTER_SEVERITY_PRESET": _one_of(_label_presets, "a cluster severity preset"),
    "BTC_CLAUDE_BASE_URL": _http_url,
    "BTC_EXPLAIN_MIN_SEVERITY": _one_of(SEVERITIES, "a severity"),
    "BTC_CLAUDE_MAX_CALLS_PER_RUN": _whole_number(0),
    "BTC_CLAUDE_DAILY_TOKEN_BUDGET": _whole_number(0),
    "BTC_CLAUDE_BATCH_THRESHOLD": _whole_number(1),
    "SLACK_WEBHOOK_URL": _http_url,
    "BTC_ALERT_MIN_SEVERITY": _one_of(SEVERITIES, "a severity"),
    "BTC_ALERT_IN_RUN": _on_off,
    "BTC_DAGSTER_UI_URL": _http_url,
    "BTC_LIVE": _on_off,
    "BTC_RUN_MODE": _one_of(("backfill", "in-process"), "a run mode"),
    "BTC_LOG_LEVEL": lambda name, value: _LOG_LEVEL(name, value.upper()),
}


def _partitions_problem() -> ConfigProblem | None:
    try:
        partition_bounds(configured_start(), configured_end())
    except ValueError as exc:
        text = str(exc)
        variable = "BTC_PARTITIONS_END" if text.startswith("BTC_PARTITIONS_END") else "BTC_PARTITIONS_START"
        return ConfigProblem(variable, text)
    return None


def _source_problems() -> list[ConfigProblem]:
    """What a chosen source needs besides its own value (a folder, a destination's partner setting)."""
    problems = []
    source = settings.env_value("BTC_SOURCE")
    if source == "blockchair-dump":
        folder = settings.env_value("BTC_DUMP_DIR")
        if not folder:
            problems.append(ConfigProblem("BTC_DUMP_DIR", "BTC_SOURCE=blockchair-dump needs BTC_DUMP_DIR: a folder of "
                                          "blockchair_bitcoin_transactions_YYYYMMDD*.tsv.gz files"))
        elif not Path(folder).expanduser().is_dir():
            problems.append(ConfigProblem("BTC_DUMP_DIR", f"BTC_DUMP_DIR={folder!r} is not a folder (BTC_SOURCE=blockchair-dump "
                                          "reads blockchair_bitcoin_transactions_YYYYMMDD*.tsv.gz files from it)"))
        elif not any(Path(folder).expanduser().glob("blockchair_bitcoin_transactions_*.tsv*")):
            problems.append(ConfigProblem("BTC_DUMP_DIR", f"BTC_DUMP_DIR={folder!r} holds no "
                                          "blockchair_bitcoin_transactions_YYYYMMDD*.tsv.gz file"))
    if source == "bitcoin-core":
        cookie = settings.env_value("BTC_CORE_RPC_COOKIE")
        if cookie and not Path(cookie).expanduser().is_file():
            problems.append(ConfigProblem("BTC_CORE_RPC_COOKIE", f"BTC_CORE_RPC_COOKIE={cookie!r} is not a file (the node "
                                          "writes it as <datadir>/.cookie while it runs)"))
        elif not cookie and not (settings.env_value("BTC_CORE_RPC_USER") and settings.env_value("BTC_CORE_RPC_PASSWORD")):
            problems.append(ConfigProblem("BTC_CORE_RPC_COOKIE", "BTC_SOURCE=bitcoin-core needs RPC credentials: "
                                          "BTC_CORE_RPC_COOKIE (the node's .cookie file) or BTC_CORE_RPC_USER and "
                                          "BTC_CORE_RPC_PASSWORD"))
    bot_only = settings.env_value("SLACK_BOT_TOKEN") and not settings.env_value("SLACK_WEBHOOK_URL")
    if bot_only and not settings.env_value("SLACK_CHANNEL"):
        problems.append(ConfigProblem("SLACK_CHANNEL", "SLACK_BOT_TOKEN is set but SLACK_CHANNEL is not: the bot needs a "
                                      "channel to post to, e.g. SLACK_CHANNEL=#btc-alerts"))
    return problems


def configuration_problems() -> list[ConfigProblem]:
    """Every wrong setting in the environment, in the order of the settings table."""
    problems = []
    for setting in settings.SETTINGS:
        check = VALUE_CHECKS.get(setting.name)
        value = settings.env_value(setting.name)
        if check is not None and value is not None:
            message = check(setting.name, value)
            if message:
                problems.append(ConfigProblem(setting.name, message))
    partitions = _partitions_problem()
    if partitions:
        problems.append(partitions)
    if not any(p.variable in ("BTC_SOURCE", "SLACK_WEBHOOK_URL") for p in problems):
        problems.extend(_source_problems())
    return problems


def check_configuration() -> None:
    """Raise :class:`ConfigError` naming every wrong setting, or return quietly."""
    problems = configuration_problems()
    if problems:
        raise ConfigError(problems)
