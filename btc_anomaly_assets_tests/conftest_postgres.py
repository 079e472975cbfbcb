"""The one PostgreSQL server of a test session (btc_anomaly_testing.postgres_server), started on first use."""

import pytest

from btc_anomaly_testing.postgres_server import PostgresServer


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session; each test takes its own database (``new_database()``)."""
    with PostgresServer() as server:
        yield server
