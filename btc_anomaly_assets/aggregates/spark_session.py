"""Spark sessions from plain settings: classic (``spark.master``) or Spark Connect (``sc://``).

Why a Connect session is built through ``pyspark.sql.connect.session.SparkSession`` directly:
the generic ``SparkSession.builder`` refuses a Connect session in a process that already has a
classic one (``SESSION_ALREADY_EXIST``), and tests, the benchmark and a Dagster code location
may hold both. Code using the session must stick to DataFrame APIs (``spark_context`` does not
exist under Connect).

Why the TCP pre-check: against an unreachable endpoint the Connect client retries for more than
100 s before failing; a plain TCP connect with a short timeout fails in seconds and names the
endpoint.

The module also starts and stops a local Connect server from the installed pyspark
(``sbin/start-connect-server.sh --wait``), for tests, the benchmark and local runs:

    python -m btc_anomaly_assets.aggregates.spark_session --port 15002

runs one in the foreground until Ctrl-C or SIGTERM; ``SparkSettings(remote="sc://127.0.0.1:15002")``
then connects to it.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from btc_anomaly_assets.aggregates.spark_driver import note_user

logger = logging.getLogger(__name__)

DEFAULT_MASTER = "local[*]"
DEFAULT_APP_NAME = "btc-anomaly-assets"
DEFAULT_CONNECT_PORT = 15002
ENDPOINT_CHECK_TIMEOUT_SECONDS = 3.0
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
# An empty request to this method is answered with an error by any Spark Connect server.
_CONNECT_PROBE_METHOD = "/spark.connect.SparkConnectService/Config"

# Every session computes and returns timestamps in UTC, whatever the machine's zone.
FIXED_CONF = {"spark.sql.session.timeZone": "UTC"}
# Arrow makes toPandas fast; only settable on a classic session (a Connect client always uses it).
CLASSIC_DEFAULT_CONF = {"spark.sql.execution.arrow.pyspark.enabled": "true"}


class SparkEndpointError(RuntimeError):
    """A Spark Connect endpoint that is malformed or not reachable (message names host:port only)."""


class ConnectServerError(RuntimeError):
    """A local Spark Connect server that could not be started; the message points at its log."""


@dataclass(frozen=True)
class SparkSettings:
    """Where and how to run Spark.

    ``remote`` (``sc://host:port[/;token=...]``) selects Spark Connect and wins over ``master``;
    otherwise a classic session runs with ``spark.master = master``. ``extra_conf`` is passed
    as session config (for Connect only runtime SQL confs take effect).
    """

    master: str | None = DEFAULT_MASTER
    remote: str | None = None
    app_name: str = DEFAULT_APP_NAME
    extra_conf: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        remote = connect_endpoint_label(self.remote) if self.remote else None
        return f"SparkSettings(master={self.master!r}, remote={remote!r}, app_name={self.app_name!r}, extra_conf=<{len(self.extra_conf)} keys>)"


def build_spark_session(settings: SparkSettings) -> Any:
    """A classic or Connect ``SparkSession`` for ``settings`` (get-or-create, session zone UTC).

    Raises ``SparkEndpointError`` within about ``ENDPOINT_CHECK_TIMEOUT_SECONDS`` when a Connect
    endpoint is not reachable.
    """
    conf = {**settings.extra_conf, **FIXED_CONF}
    if settings.remote:
        return _build_connect_session(settings.remote, settings.app_name, conf)
    return _build_classic_session(settings.master or DEFAULT_MASTER, settings.app_name, conf)


def _build_classic_session(master: str, app_name: str, conf: dict[str, str]) -> Any:
    from pyspark.sql import SparkSession

    if master.startswith("local"):
        # Bind the local driver to loopback (no "hostname resolves to a loopback address" warning) and
        # keep its banner out of the terminal; a cluster master keeps the cluster's own settings.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # A local driver also starts from the class archive, when `btc-anomaly spark-class-archive` made one.
        from btc_anomaly_assets.aggregates.spark_class_archive import java_options as class_archive_options

        quiet = f"-Dlog4j2.configurationFile={Path(__file__).with_name('log4j2-quiet.properties').as_uri()}"
        options = conf.get("spark.driver.extraJavaOptions", CLASSIC_DEFAULT_CONF.get("spark.driver.extraJavaOptions", ""))
        conf = {**conf, "spark.driver.extraJavaOptions": f"{options} {quiet} {class_archive_options()}".strip()}
    from pyspark import SparkContext

    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in {**CLASSIC_DEFAULT_CONF, **conf}.items():
        builder = builder.config(key, value)
    running = SparkContext._active_spark_context  # pyspark's one driver per process, if it is up
    session = builder.getOrCreate()
    note_user(session, started=running is None)
    return session


def _build_connect_session(remote: str, app_name: str, conf: dict[str, str]) -> Any:
    host, port = parse_connect_endpoint(remote)
    check_endpoint_reachable(host, port, use_ssl=_uses_ssl(remote))
    from pyspark.sql.connect.session import SparkSession as ConnectSparkSession

    builder = ConnectSparkSession.builder.remote(remote).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    _close_client_at_exit(session.client)
    return session


_clients_with_exit_hook: set[int] = set()


def _close_client_at_exit(client: Any) -> None:
    """Close a Connect client's channel when the process exits, before pyspark's own exit hook runs.

    pyspark 4.3 registers ``SparkConnectClient._on_exit`` when a client is created. It sends cleanup
    RPCs, and when the server has already gone (a test's or benchmark's local server, or a cluster
    restart) the client retries them for about ten minutes before the process can exit. ``atexit``
    runs hooks last-registered-first, so this one runs first. It closes the channel, which sends no
    RPC, and a closed client skips its cleanup. This project creates no server-side state that
    outlives the session: no ML cache and no released-on-exit sessions.
    """
    if id(client) in _clients_with_exit_hook:
        return
    _clients_with_exit_hook.add(id(client))
    atexit.register(close_connect_client, client)


def close_connect_client(client: Any) -> None:
    """Close ``client``'s channel unless it is already closed; errors are logged, never raised at exit."""
    if getattr(client, "is_closed", False):
        return
    try:
        client.close()
    except Exception as exc:  # at interpreter exit nothing can act on it; say so and go on
        logger.warning("closing the Spark Connect client at exit failed: %s", type(exc).__name__)


def parse_connect_endpoint(remote: str) -> tuple[str, int]:
    """``(host, port)`` of an ``sc://host[:port][/;params]`` URL (default port 15002)."""
    parts = urlsplit(remote)
    if parts.scheme != "sc" or not parts.hostname:
        raise SparkEndpointError(
            f"Spark Connect endpoint {connect_endpoint_label(remote)} is not a valid sc://host:port URL"
        )
    try:
        port = parts.port or DEFAULT_CONNECT_PORT
    except ValueError:
        raise SparkEndpointError(f"Spark Connect endpoint {connect_endpoint_label(remote)} has a bad port") from None
    return parts.hostname, port


def _uses_ssl(remote: str) -> bool:
    params = urlsplit(remote).path.lstrip("/").split(";")
    return any(p.strip().lower() in ("use_ssl=true", "use_ssl=1") for p in params)


def connect_endpoint_label(remote: str) -> str:
    """``sc://host:port`` without path, parameters (``;token=...``) or user info: safe to log."""
    try:
        parts = urlsplit(remote)
        host = parts.hostname or "?"
        port = parts.port or DEFAULT_CONNECT_PORT
        return f"{parts.scheme or '?'}://{host}:{port}"
    except ValueError:
        return "<unparseable Spark Connect URL>"


def check_endpoint_reachable(host: str, port: int, timeout: float = ENDPOINT_CHECK_TIMEOUT_SECONDS, *, use_ssl: bool = False) -> None:
    """Raise ``SparkEndpointError`` unless a Spark Connect server answers at ``host:port`` within ~``timeout`` s.

    First a plain TCP connect (fails fast on refused/unroutable), then one gRPC call with a
    deadline, because a proxy or another service may accept TCP and the Connect client would
    then retry for minutes. Any gRPC answer except "unavailable"/"deadline exceeded"/
    "unimplemented" (empty request, so the server replies with an error) proves a Connect server.
    """
    label = f"sc://{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SparkEndpointError(
            f"Spark Connect endpoint {label} is not reachable ({reason}); "
            "start the server (python -m btc_anomaly_assets.aggregates.spark_session --port PORT) or fix the remote URL"
        ) from None
    code = _probe_connect_service(host, port, timeout, use_ssl)
    if code is None:
        return
    import grpc

    if code == grpc.StatusCode.UNIMPLEMENTED:
        raise SparkEndpointError(f"{label} accepts connections but is not a Spark Connect server (gRPC {code.name})")
    raise SparkEndpointError(f"Spark Connect endpoint {label} does not answer (gRPC {code.name} within {timeout:.0f} s)")


def _probe_connect_service(host: str, port: int, timeout: float, use_ssl: bool):
    """The gRPC status code that rules the endpoint out, or None when a Connect server answered."""
    import grpc

    target = f"{host}:{port}"
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials()) if use_ssl else grpc.insecure_channel(target)
    try:
        channel.unary_unary(_CONNECT_PROBE_METHOD)(b"", timeout=timeout)
        return None
    except grpc.RpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED):
            return code
        return None  # e.g. INTERNAL "invalid session handle" or UNAUTHENTICATED: a Connect server answered
    finally:
        channel.close()


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_loopback_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pyspark_home() -> Path:
    """The Spark home shipped inside the installed pyspark package."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


class LocalConnectServer:
    """A Spark Connect server process started by ``start_local_connect_server``; ``stop()`` ends it.

    The server runs in its own process group (the script's shell and its JVM), so ``stop()``
    signals exactly that group and nothing else.
    """

    def __init__(self, process: subprocess.Popen, port: int, work_dir: Path, log_path: Path):
        self.process = process
        self.port = port
        self.work_dir = work_dir
        self.log_path = log_path
        self._ready = False

    @property
    def remote(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"LocalConnectServer(pid={self.process.pid}, remote={self.remote!r})"

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> "LocalConnectServer":
        """Block until the server answers a trivial query (at most ``timeout`` s); idempotent.

        On failure the server is stopped (log kept) and ``ConnectServerError`` raised.
        """
        if not self._ready:
            try:
                _wait_until_ready(self, timeout)
            except BaseException:
                self.stop(keep_log=True)
                raise
            self._ready = True
        return self

    def stop(self, timeout: float = 20.0, *, keep_log: bool = False) -> None:
        """Terminate the server's process group, escalating to SIGKILL after ``timeout`` s.

        The server's working folder (log, pid files) is removed unless ``keep_log``.
        """
        if self.running():
            signal_process_group(self.process.pid, signal.SIGTERM)
        # The script's shell dies at once; the JVM in the same group shuts down on its own time.
        deadline = time.monotonic() + timeout
        while self.process.poll() is None or process_group_alive(self.process.pid):  # poll() reaps the shell
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if process_group_alive(self.process.pid):
            logger.warning("Spark Connect server group %s ignored SIGTERM for %.0f s; killing it", self.process.pid, timeout)
            signal_process_group(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=timeout)
        if not keep_log:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "LocalConnectServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def signal_process_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to a process group (a Connect server's script and JVM); nothing if it is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def process_group_alive(pgid: int) -> bool:
    """Whether any process of the group is still there."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_local_connect_server(
    port: int | None = None,
    *,
    master: str = "local[2]",
    driver_memory: str = "2g",
    conf: dict[str, str] | None = None,
    ready_timeout: float = 120.0,
    wait: bool = True,
) -> LocalConnectServer:
    """Start ``sbin/start-connect-server.sh --wait`` from the installed pyspark on 127.0.0.1.

    With ``wait`` (the default) blocks until the port accepts and a trivial query
    (``spark.range(1).count()``) succeeds, so the caller's first real query does not pay the
    start-up; ``wait=False`` returns at once (call ``server.wait_ready()`` before use, e.g. to
    boot the server while other work runs). ``port=None`` picks a free port. Raises
    ``ConnectServerError`` (with the log path and its tail) if it exits or is not ready within
    ``ready_timeout`` s; the server is then stopped and its log kept.
    """
    port = port or free_loopback_port()
    if port_accepts("127.0.0.1", port):
        raise ConnectServerError(f"port 127.0.0.1:{port} is already in use; choose another port")
    script = pyspark_home() / "sbin" / "start-connect-server.sh"
    if not script.is_file():
        raise ConnectServerError(f"cannot find {script} in the installed pyspark")
    work_dir = Path(tempfile.mkdtemp(prefix="btc-spark-connect-"))
    log_path = work_dir / "server.log"
    command = [str(script), "--wait", "--master", master, "--driver-memory", driver_memory]
    server_conf = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        **(conf or {}),
    }
    for key, value in server_conf.items():
        command += ["--conf", f"{key}={value}"]
    env = _server_environment(work_dir)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = LocalConnectServer(process, port, work_dir, log_path)
    if wait:
        server.wait_ready(ready_timeout)
    return server


def _server_environment(work_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # A client-side remote setting would turn the server's own launcher into a client.
    for name in ("SPARK_REMOTE", "SPARK_LOCAL_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_HOME"):
        env.pop(name, None)
    env.update(
        SPARK_HOME=str(pyspark_home()),
        SPARK_PID_DIR=str(work_dir),  # private: spark-daemon.sh refuses to start if a shared pid file is live
        SPARK_LOG_DIR=str(work_dir),
        SPARK_IDENT_STRING=f"btc-{work_dir.name}",
    )
    return env


def _wait_until_ready(server: LocalConnectServer, ready_timeout: float) -> None:
    deadline = time.monotonic() + ready_timeout
    while not port_accepts("127.0.0.1", server.port):
        if not server.running():
            raise ConnectServerError(
                f"Spark Connect server exited with code {server.process.returncode} during start-up; "
                f"log {server.log_path}:\n{_log_tail(server.log_path)}"
            )
        if time.monotonic() > deadline:
            raise ConnectServerError(
                f"Spark Connect server did not open port {server.port} within {ready_timeout:.0f} s; "
                f"log {server.log_path}:\n{_log_tail(server.log_path)}"
            )
        time.sleep(0.2)
    _run_trivial_query(server.remote)


def _run_trivial_query(remote: str) -> None:
    from pyspark.sql.connect.session import SparkSession as ConnectSparkSession

    session = ConnectSparkSession.builder.remote(remote).create()
    try:
        count = session.range(1).count()
        if count != 1:
            raise ConnectServerError(f"Spark Connect server at {remote} answered range(1).count() with {count}")
    finally:
        session.stop()


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Run a local Spark Connect server in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description="Run a local Spark Connect server (from the installed pyspark) until Ctrl-C.")
    parser.add_argument("--port", type=int, default=DEFAULT_CONNECT_PORT)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="2g")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    started = time.monotonic()
    server = start_local_connect_server(args.port, master=args.master, driver_memory=args.driver_memory)
    print(f"Spark Connect server ready at {server.remote} after {time.monotonic() - started:.1f} s (log {server.log_path}); Ctrl-C stops it", flush=True)
    try:
        # Also when started in the background, where a shell makes SIGINT ignored.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
        while server.running():
            time.sleep(1.0)
        print(f"Spark Connect server exited with code {server.process.returncode}; log {server.log_path}")
    except KeyboardInterrupt:
        print("stopping the Spark Connect server")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
