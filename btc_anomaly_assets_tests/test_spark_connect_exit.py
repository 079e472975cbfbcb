"""A process holding a Spark Connect session exits promptly after its server has gone.

pyspark 4.3's own exit hook sends a cleanup RPC and, against a server that is no longer there,
retries it for about ten minutes (seen here as a test file that passed in 27 s and then took
642 s to exit). ``build_spark_session`` registers a hook that closes the client first.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from btc_anomaly_assets.aggregates import spark_session
from btc_anomaly_assets.aggregates.spark_session import SparkSettings, build_spark_session, close_connect_client

REPO = Path(__file__).resolve().parents[1]
# Far below the ~10 min of retries the hook prevents, far above the ~5 s of imports and interpreter exit.
EXIT_BOUND_SECONDS = 90

# A real Connect client to a loopback port where no server listens (none has to be started: the
# client connects lazily), then the interpreter exits.
CLIENT_THEN_EXIT = textwrap.dedent("""
    import sys
    from pyspark.sql.connect.client import SparkConnectClient
    from btc_anomaly_assets.aggregates.spark_session import _close_client_at_exit, free_loopback_port
    client = SparkConnectClient(f"sc://127.0.0.1:{free_loopback_port()}")
    _close_client_at_exit(client)
    print("exiting", flush=True)
""")


def test_a_process_whose_connect_server_is_gone_exits_without_retrying_cleanup():
    done = subprocess.run([sys.executable, "-c", CLIENT_THEN_EXIT], cwd=REPO, capture_output=True, text=True,
                          timeout=EXIT_BOUND_SECONDS)
    assert done.returncode == 0 and "exiting" in done.stdout, done.stderr[-2000:]


class _Client:
    def __init__(self, fail: bool = False):
        self.is_closed, self.closes, self._fail = False, 0, fail

    def close(self):
        self.closes += 1
        if self._fail:
            raise RuntimeError("channel already torn down")
        self.is_closed = True


class _Session:
    def __init__(self, client):
        self.client = client


class _Builder:
    """The Connect builder's chain, handing out one session (getOrCreate returns the same one again)."""

    def __init__(self, session):
        self.session, self.conf = session, {}

    def remote(self, url):
        return self

    def appName(self, name):
        return self

    def config(self, key, value):
        self.conf[key] = value
        return self

    def getOrCreate(self):
        return self.session


def test_every_connect_session_built_gets_one_exit_hook(monkeypatch):
    from pyspark.sql.connect.session import SparkSession as ConnectSparkSession

    client = _Client()
    registered = []
    monkeypatch.setattr(spark_session, "check_endpoint_reachable", lambda *a, **k: None)
    monkeypatch.setattr(ConnectSparkSession, "builder", _Builder(_Session(client)))
    monkeypatch.setattr(spark_session.atexit, "register", lambda f, *args: registered.append((f, args)))
    monkeypatch.setattr(spark_session, "_clients_with_exit_hook", set())
    settings = SparkSettings(remote="sc://127.0.0.1:15002")
    build_spark_session(settings)
    build_spark_session(settings)  # get-or-create: the same client, not a second hook
    assert registered == [(close_connect_client, (client,))]
    hook, args = registered[0]
    hook(*args)
    hook(*args)  # already closed: nothing more to do
    assert client.is_closed and client.closes == 1


def test_a_failing_close_at_exit_is_logged_not_raised(caplog):
    client = _Client(fail=True)
    close_connect_client(client)
    assert client.closes == 1
    assert "closing the Spark Connect client at exit failed: RuntimeError" in caplog.text
