"""BlockchairClient against a fake Blockchair API that serves the real 14 Aug 2025 dump rows."""

from __future__ import annotations

import logging
import socket
from datetime import datetime, timedelta

import pandas as pd
import pytest
import requests

from btc_anomaly_assets.ingest.blockchair_api import (
    BlockchairClient,
    BlockchairCoolOffError,
    BlockchairError,
    BlockchairRateLimitError,
    BlockchairTransportError,
)
from btc_anomaly_assets.ingest.blockchair_dump import read_dump_window
from btc_anomaly_testing.fakes.blockchair_server import (
    MEMPOOL_PATH,
    FakeBlockchair,
    FakeBlockchairHost,
    as_mempool_rows,
    load_dump_rows,
)
from btc_anomaly_testing.fixture_paths import DUMP_14

FILE_14 = DUMP_14
TIP = 909932
KEY = "sEcReT-key-4711"
# Block 909922 (3,368 rows) is the only block in this minute.
BLOCK_MINUTE = (datetime(2025, 8, 14, 0, 5), datetime(2025, 8, 14, 0, 6))
SMALL = 250  # rows served by the "small" fake: 3 pages of 100


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load_dump_rows(FILE_14)


@pytest.fixture(scope="module")
def host():
    with FakeBlockchairHost() as shared:
        yield shared


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger("test.blockchair_api")


def _client(server, sleeps, logger, **overrides) -> BlockchairClient:
    options = {"api_key": KEY, "sleep": sleeps.append, "logger": logger, "backoff_seconds": 2.0}
    options.update(overrides)
    return BlockchairClient(base_url=server.url, **options)


def _hashes(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["hash"])


def test_confirmed_window_matches_the_dump_exactly(host, rows, sleeps, logger):
    start, end = datetime(2025, 8, 14, 0, 0), datetime(2025, 8, 14, 2, 0)
    fake = FakeBlockchair(rows)
    with host.use(fake) as server:
        result = _client(server, sleeps, logger).fetch_window(start, end, mempool=False)

    dump = read_dump_window(FILE_14, start, end).frame
    assert len(result.frame) == result.reported_total_rows == 27_763
    pd.testing.assert_frame_equal(
        result.frame.sort_values("hash").reset_index(drop=True),
        dump.sort_values("hash").reset_index(drop=True),
        check_exact=False,
        rtol=1e-12,
    )
    assert result.frame["time"].is_monotonic_increasing
    assert result.state == TIP and result.duplicates_dropped == 0
    assert result.windows_split >= 2  # 27,763 rows > 10,100 reachable by offset paging
    assert result.requests_made == len(server.requests) == fake.request_count
    queries = [request.query for request in server.requests]
    assert queries[0]["q"] == ["time(2025-08-14 00:00:00...2025-08-14 02:00:00)"]
    assert all(q["q"][0].endswith(f",block_id(..{TIP})") for q in queries[1:])
    assert all(q["s"] == ["time(asc),id(asc)"] and q["limit"] == ["100"] for q in queries)
    assert max(int(q["offset"][0]) for q in queries) <= 10_000
    assert all(q["key"] == [KEY] for q in queries)
    # Costs as Blockchair charges them: (5 + filters) x 1.9 for limit=100.
    assert result.request_cost_total == pytest.approx(6 * 1.9 + 7 * 1.9 * (len(queries) - 1))
    assert result.api_version == "2.0.95-ie"


def test_window_above_the_offset_cap_is_split_without_gaps_or_duplicates(host, rows, sleeps, logger):
    mempool = as_mempool_rows(rows[:6000], spread_seconds=900)
    start, end = datetime(2025, 8, 13, 23, 55), datetime(2025, 8, 14, 0, 15)
    expected = sorted(r["hash"] for r in mempool if start.strftime("%F %T") <= r["time"] < end.strftime("%F %T"))
    fake = FakeBlockchair(rows, mempool, max_offset=300)
    with host.use(fake) as server:
        result = _client(server, sleeps, logger, max_offset=300).fetch_window(start, end, mempool=True)

    assert len(expected) > 1000  # far above the 400 rows one window can page through here
    assert _hashes(result.frame) == expected
    assert result.reported_total_rows == len(expected) and result.duplicates_dropped == 0
    assert result.windows_split >= 3
    assert all(request.path == MEMPOOL_PATH for request in server.requests)
    assert all("block_id" not in request.param("q") for request in server.requests)  # mempool: nothing to pin
    assert max(int(request.param("offset")) for request in server.requests) <= 300
    assert set(result.frame["time_basis"]) == {"first_seen"} and set(result.frame["block_id"]) == {-1}


def test_one_second_holding_more_rows_than_paging_reaches_is_a_clear_error(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows, max_offset=300)
    with host.use(fake) as server, pytest.raises(BlockchairError, match="one-second window cannot be split") as caught:
        _client(server, sleeps, logger, max_offset=300).fetch_window(*BLOCK_MINUTE, mempool=False)
    assert "2025-08-14 00:05:57...2025-08-14 00:05:58" in str(caught.value)


def test_new_block_between_pages_shifts_nothing(host, rows, sleeps, logger):
    """A block mined mid-fetch whose (miner-set) time falls inside the window, before the rows
    already paged: unpinned, it would push every later page down and repeat rows."""
    start, end = datetime(2025, 8, 14, 0, 0), datetime(2025, 8, 14, 0, 10)
    intruders = [
        {**row, "block_id": TIP + 1, "id": 5_000_000_000 + i, "hash": f"{i:064x}", "time": "2025-08-14 00:03:00"}
        for i, row in enumerate(rows[5000:5150])
    ]
    fake = FakeBlockchair(rows)
    fake.add_block_after(2, intruders)
    with host.use(fake) as server:
        result = _client(server, sleeps, logger).fetch_window(start, end, mempool=False)
        unpinned = requests.get(server.url + "/bitcoin/transactions",
                                params={"q": "time(2025-08-14 00:00:00...2025-08-14 00:10:00)"}).json()

    dump = read_dump_window(FILE_14, start, end).frame
    assert fake.state == TIP + 1 and unpinned["context"]["total_rows"] == len(dump) + 150  # the shift happened
    assert _hashes(result.frame) == _hashes(dump)
    assert result.duplicates_dropped == 0 and result.reported_total_rows == len(dump)


def test_mempool_arrivals_between_pages_are_deduplicated(host, rows, sleeps, logger):
    mempool = as_mempool_rows(rows[:SMALL], spread_seconds=60)
    start, end = datetime(2025, 8, 14, 0, 4), datetime(2025, 8, 14, 0, 6)
    early = [{**row, "hash": f"{i:064x}", "id": 7_000_000_000 + i, "time": "2025-08-14 00:04:00"}
             for i, row in enumerate(mempool[:30])]
    fake = FakeBlockchair(rows, mempool)
    fake.add_mempool_rows_after(1, early)
    with host.use(fake) as server:
        result = _client(server, sleeps, logger).fetch_window(start, end, mempool=True)

    original = {row["hash"] for row in mempool}
    assert original <= set(result.frame["hash"])  # no gaps: arrivals only push rows later
    assert not result.frame["hash"].duplicated().any()
    assert result.duplicates_dropped == 30  # the last 30 rows of page 1 came again on page 2


@pytest.mark.parametrize("code", [402, 429, 435])
def test_limit_codes_are_retried_with_exponential_backoff(host, rows, sleeps, logger, code):
    fake = FakeBlockchair(rows[:SMALL])
    fake.fail_next(code, times=2)
    with host.use(fake) as server:
        result = _client(server, sleeps, logger).fetch_window(*BLOCK_MINUTE, mempool=False)
    assert len(result.frame) == SMALL
    assert sleeps == [2.0, 4.0]
    assert result.requests_made == 3 + 2 == fake.request_count


def test_retry_after_is_honoured_and_context_code_wins_over_http_status(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows[:SMALL])
    fake.fail_next(429, retry_after="7", http_status=200)
    with host.use(fake) as server:
        result = _client(server, sleeps, logger).fetch_window(*BLOCK_MINUTE, mempool=False)
    assert sleeps == [7.0] and len(result.frame) == SMALL


def test_limit_retries_are_bounded(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows[:SMALL])
    fake.fail_next(429, times=3, error="Too many requests")
    with host.use(fake) as server, pytest.raises(BlockchairRateLimitError, match="code 429.*gave up after 3 attempts"):
        _client(server, sleeps, logger, max_retries=2).fetch_window(*BLOCK_MINUTE, mempool=False)
    assert fake.request_count == 3 and sleeps == [2.0, 4.0]


def test_retry_after_beyond_the_cap_is_not_slept_through(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows[:SMALL])
    fake.fail_next(402, retry_after="86400")
    with host.use(fake) as server, pytest.raises(BlockchairRateLimitError, match="wait 86400 s") as caught:
        _client(server, sleeps, logger).fetch_window(*BLOCK_MINUTE, mempool=False)
    assert sleeps == [] and caught.value.retry_after_seconds == 86400


@pytest.mark.parametrize(("code", "http_status"), [(430, None), (434, None), (503, None), (430, 200)])
def test_cool_off_codes_stop_at_once_with_advice(host, rows, sleeps, logger, code, http_status):
    fake = FakeBlockchair(rows[:SMALL])
    fake.fail_next(code, http_status=http_status, error="Your IP address is temporary blacklisted")
    with host.use(fake) as server, pytest.raises(BlockchairCoolOffError) as caught:
        _client(server, sleeps, logger).fetch_window(*BLOCK_MINUTE, mempool=False)
    message = str(caught.value)
    assert f"code {code}" in message and "temporary blacklisted" in message and "retry" in message
    assert caught.value.code == code and fake.request_count == 1 and sleeps == []


def test_cool_off_reports_retry_after(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows[:SMALL])
    fake.fail_next(503, retry_after="1800")
    with host.use(fake) as server, pytest.raises(BlockchairCoolOffError, match="retry after 1800 s") as caught:
        _client(server, sleeps, logger).fetch_window(*BLOCK_MINUTE, mempool=False)
    assert caught.value.retry_after_seconds == 1800


def test_client_errors_are_not_retried(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows[:SMALL])
    fake.fail_next(400, error="Invalid value in the q parameter")
    with host.use(fake) as server, pytest.raises(BlockchairError, match="error code 400: Invalid value in the q") as caught:
        _client(server, sleeps, logger).fetch_window(*BLOCK_MINUTE, mempool=False)
    assert type(caught.value) is BlockchairError and caught.value.code == 400
    assert "/bitcoin/transactions" in str(caught.value) and fake.request_count == 1


def test_offset_beyond_the_servers_cap_is_the_real_400(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows, max_offset=300)
    with host.use(fake) as server, pytest.raises(BlockchairError, match="code 400: Offset can't be greater than 300"):
        _client(server, sleeps, logger).fetch_window(*BLOCK_MINUTE, mempool=False)  # the client believes 10,000


def test_unknown_endpoint_is_a_404_error(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows[:SMALL])
    with host.use(fake) as server, pytest.raises(BlockchairError, match="code 404"):
        BlockchairClient(base_url=server.url + "/v1", sleep=sleeps.append, logger=logger).fetch_window(
            *BLOCK_MINUTE, mempool=False
        )


def test_malformed_json_names_the_endpoint(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows[:SMALL])
    fake.malformed_next()
    with host.use(fake) as server, pytest.raises(BlockchairError, match="malformed response") as caught:
        _client(server, sleeps, logger).fetch_window(*BLOCK_MINUTE, mempool=False)
    assert f"GET {server.url}/bitcoin/transactions?q=time(" in str(caught.value)
    assert fake.request_count == 1


def test_server_error_is_retried(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows[:SMALL])
    fake.fail_next(500)
    with host.use(fake) as server:
        result = _client(server, sleeps, logger).fetch_window(*BLOCK_MINUTE, mempool=False)
    assert len(result.frame) == SMALL and sleeps == [2.0]


def test_slow_response_times_out_and_is_retried(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows[:SMALL])
    fake.slow_next(1.0)
    with host.use(fake) as server:
        result = _client(server, sleeps, logger, timeout=(1, 0.25)).fetch_window(*BLOCK_MINUTE, mempool=False)
    assert len(result.frame) == SMALL
    assert result.requests_made == 4 and sleeps == [2.0]


def test_persistent_timeouts_end_in_a_clear_error(host, rows, sleeps, logger):
    fake = FakeBlockchair(rows[:SMALL])
    fake.slow_next(1.0, times=2)
    with host.use(fake) as server, pytest.raises(BlockchairTransportError, match="timed out.*gave up after 2 attempts"):
        _client(server, sleeps, logger, timeout=(1, 0.25), max_retries=1).fetch_window(*BLOCK_MINUTE, mempool=False)


def test_requests_are_logged_with_cost_and_api_version(host, rows, sleeps, logger, caplog):
    fake = FakeBlockchair(rows[:SMALL], next_major_update="2026-03-01 00:00:00")
    with host.use(fake) as server, caplog.at_level(logging.INFO, logger=logger.name):
        _client(server, sleeps, logger).fetch_window(*BLOCK_MINUTE, mempool=False)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 3
    assert all("request_cost 11.4" in m or "request_cost 13.3" in m for m in infos)
    assert all("api version 2.0.95-ie" in m for m in infos)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("next_major_update 2026-03-01 00:00:00" in m for m in warnings)


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_api_key_never_leaks_into_logs_errors_or_reprs(host, rows, sleeps, logger, caplog):
    caplog.set_level(logging.DEBUG)  # urllib3 logs each request line (with the query) at DEBUG
    failures: list[BaseException] = []
    fake = FakeBlockchair(rows[:SMALL])
    with host.use(fake) as server:
        client = _client(server, sleeps, logger)
        fake.fail_next(429)
        client.fetch_window(*BLOCK_MINUTE, mempool=False)
        assert server.requests[0].param("key") == KEY  # the key does travel
        for code, error in ((430, "blocked"), (400, f"Invalid API key {KEY}")):
            fake.fail_next(code, error=error)
            with pytest.raises(BlockchairError) as caught:
                client.fetch_window(*BLOCK_MINUTE, mempool=False)
            failures.append(caught.value)
        fake.malformed_next()
        with pytest.raises(BlockchairError) as caught:
            client.fetch_window(*BLOCK_MINUTE, mempool=False)
        failures.append(caught.value)
    unreachable = _client(type("S", (), {"url": _closed_port_url()}), sleeps, logger, max_retries=1)
    with pytest.raises(BlockchairTransportError) as caught:
        unreachable.fetch_window(*BLOCK_MINUTE, mempool=False)
    failures.append(caught.value)

    assert "Invalid API key <redacted>" in str(failures[1])
    texts = [record.getMessage() for record in caplog.records]
    assert any("key=<redacted>" in text for text in texts)  # urllib3's own request line, redacted
    texts += [repr(client), repr(unreachable)]
    for failure in failures:
        assert failure.__cause__ is None and failure.__context__ is None
        texts += [str(failure), repr(failure)]
    leaks = [text for text in texts if KEY in text]
    assert leaks == []


def test_bad_windows_are_rejected(rows, sleeps, logger):
    client = BlockchairClient(sleep=sleeps.append, logger=logger)
    with pytest.raises(ValueError, match="empty window"):
        client.fetch_window(datetime(2025, 8, 14, 1), datetime(2025, 8, 14, 1), mempool=False)
    with pytest.raises(ValueError, match="fraction of a second"):
        client.fetch_window(datetime(2025, 8, 14, 1), datetime(2025, 8, 14, 1) + timedelta(milliseconds=5), mempool=True)
