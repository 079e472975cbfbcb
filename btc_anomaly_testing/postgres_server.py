"""A real, throwaway PostgreSQL server for tests and benchmarks (the distribution's own binaries).

``PostgresServer`` runs ``initdb`` and ``postgres`` from PostgreSQL's ``bin`` folder (``BTC_PG_BIN``,
else the folder of ``initdb`` on PATH, else the newest ``/usr/lib/postgresql/<N>/bin``) on a free
loopback port, with its data directory and unix socket in a fresh temporary folder. ``initdb``
refuses to run as root, so as root the server runs as an unprivileged system user (``postgres``
if it exists, else ``nobody``) and the folder is handed to that user. Durability is switched off
(``fsync``, ``synchronous_commit``, ``full_page_writes``): the data is thrown away afterwards.

Each test asks for its own database (``server.new_database()``), so tests sharing the one
session server never see each other's runs. ``.ci/run`` installs the ``postgresql`` package when
``initdb`` is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import psycopg2

SUPERUSER = "btc"
START_TIMEOUT_SECONDS = 60


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``postgres``; raises ``PostgresUnavailable`` naming where it looked."""
    candidates = []
    if os.environ.get("BTC_PG_BIN"):
        candidates.append(Path(os.environ["BTC_PG_BIN"]))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(os.path.realpath(initdb)).parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates.extend(Path(p) for p in reversed(versions))
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, postgres): looked in BTC_PG_BIN, PATH and /usr/lib/postgresql/*/bin; "
        "install the `postgresql` package (apt-get install postgresql), as .ci/run does")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or None when this process is not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a `postgres` nor a `nobody` user exists for initdb")


class PostgresServer:
    """``with PostgresServer() as pg: url = pg.new_database()``: a PostgreSQL server for one session."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.port = 0
        self.root: Path | None = None
        self._process: subprocess.Popen | None = None
        self._databases = 0

    def _as_server_user(self) -> dict:
        user = _server_user()
        return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def start(self) -> Self:
        self.root = Path(tempfile.mkdtemp(prefix="btc-postgres-"))
        data, sockets = self.root / "data", self.root / "sockets"
        sockets.mkdir()
        user = _server_user()
        if user is not None:
            for path in (self.root, sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "HOME": str(self.root)}
        initdb = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C",
             "--no-sync"], check=False, env=env, cwd=self.root, capture_output=True, text=True, **self._as_server_user())
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb in {data} failed ({initdb.returncode}): {initdb.stderr.strip()[-2000:]}")
        self.port = _free_port()
        log = open(self.root / "postgres.log", "wb")  # noqa: SIM115 - kept open for the server's lifetime
        self._process = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sockets),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "shared_buffers=64MB"],
            env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._as_server_user())
        log.close()
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}: {self.log_tail()}")
            try:
                psycopg2.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections within {START_TIMEOUT_SECONDS} s: {self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        path = self.root / "postgres.log" if self.root else None
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path and path.exists() else "(no log)"

    def url(self, database: str) -> str:
        """libpq URL (psycopg2.connect, psql)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def sqlalchemy_url(self, database: str) -> str:
        """What BTC_DAGSTER_PG_URL takes: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; name psycopg2."""
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "dagster") -> str:
        """A new empty database on this server; returns its SQLAlchemy URL (what BTC_DAGSTER_PG_URL takes)."""
        self._databases += 1
        name = f"{prefix}_{self._databases}"
        conn = psycopg2.connect(self.url("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.sqlalchemy_url(name)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, stop
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
