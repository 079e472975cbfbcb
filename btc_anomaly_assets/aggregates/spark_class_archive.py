"""A class-data-sharing archive (Java AppCDS) of the classes a local Spark driver loads.

A classic Spark session loads ~15,000 classes from pyspark's jars before its first query; the JVM
parses and verifies each one, in every process. Java 17 can write the classes a run loaded to an
archive at exit (``-XX:ArchiveClassesAtExit``) and map them from it in later JVMs
(``-XX:SharedArchiveFile``). Measured on 2 cores: session start 5.0 -> 2.5 s of JVM CPU, the
first (warm-up) aggregation 6.9 -> 4.2 s; the archive is ~180 MB and writing it costs one slower
run (~33 s), so it is made once, on request:

    btc-anomaly spark-class-archive

builds it in a separate process (a session, one warm-up aggregation, exit) under the archive
folder (``SPARK_CLASS_ARCHIVE``: default ``~/.cache/btc-anomaly-assets``, ``off`` to never use
one) and moves it into place atomically. Its name carries pyspark's version and a digest of its
jars and of the Java runtime, so an upgrade simply finds no archive (and runs as before) until
it is built again. When one exists, local classic sessions get ``-XX:SharedArchiveFile``; the
JVM checks the archive itself and, should it not match, prints a ``[cds]`` warning and starts
without it (the run's log shows that line).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ENV = "SPARK_CLASS_ARCHIVE"
# The dumping child runs this module by name (``__name__`` is ``__main__`` under ``python -m``).
MODULE = "btc_anomaly_assets.aggregates.spark_class_archive"
DEFAULT_FOLDER = Path("~/.cache/btc-anomaly-assets")
OFF = ("off", "none", "no", "0", "false")


def archive_folder() -> Path | None:
    """The folder archives live in, or None when ``SPARK_CLASS_ARCHIVE=off``."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return Path(value).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache) / "btc-anomaly-assets") if cache else DEFAULT_FOLDER.expanduser()


def runtime_digest(pyspark_dir: Path, java: str | None) -> str:
    """A digest of what an archive is only valid for: pyspark's jars (names and sizes) and the Java binary."""
    digest = hashlib.sha256()
    for jar in sorted((pyspark_dir / "jars").glob("*.jar")):
        digest.update(f"{jar.name}:{jar.stat().st_size}\n".encode())
    if java:
        real = Path(java).resolve()
        digest.update(f"{real}:{real.stat().st_size}:{real.stat().st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _java_binary() -> str | None:
    home = os.environ.get("JAVA_HOME", "").strip()
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def archive_path() -> Path | None:
    """Where this installation's archive is (whether or not it exists yet); None when switched off."""
    folder = archive_folder()
    if folder is None:
        return None
    import pyspark

    pyspark_dir = Path(pyspark.__file__).parent
    return folder / f"spark-{pyspark.__version__}-{runtime_digest(pyspark_dir, _java_binary())}.jsa"


def java_options() -> str:
    """``-XX:SharedArchiveFile=…`` when this installation's archive exists, else ''."""
    path = archive_path()
    return f"-XX:SharedArchiveFile={path}" if path is not None and path.is_file() else ""


def build_archive(*, timeout: float = 600.0) -> tuple[Path, float]:
    """Write this installation's archive (replacing any); returns its path and the seconds it took.

    Raises ``RuntimeError`` naming the folder when archives are switched off, and the child's
    output tail when the JVM wrote no archive.
    """
    path = archive_path()
    if path is None:
        raise RuntimeError(f"{ENV} is off: no class archive is used or built")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    began = time.monotonic()
    try:
        child = subprocess.run([sys.executable, "-m", MODULE, "--dump", str(partial)], capture_output=True, text=True,
                               timeout=timeout, env={**os.environ, ENV: "off"})
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"the JVM writing the class archive {partial} did not finish within {timeout:.0f} s") from None
    if child.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        tail = (child.stdout + child.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"the JVM wrote no class archive to {partial} (exit {child.returncode}):\n" + "\n".join(tail))
    os.replace(partial, path)
    return path, time.monotonic() - began


def _dump(into: Path) -> None:
    """In a child process: a local session that writes the classes it loaded to ``into`` at exit."""
    from btc_anomaly_assets.aggregates.resources import CLASSIC_CONF, DEFAULT_DRIVER_MEMORY
    from btc_anomaly_assets.aggregates.spark_session import SparkSettings, build_spark_session
    from btc_anomaly_assets.aggregates.spark_warmup import warm_up_aggregation

    conf = {**CLASSIC_CONF, "spark.driver.memory": DEFAULT_DRIVER_MEMORY}
    conf["spark.driver.extraJavaOptions"] = f"{conf['spark.driver.extraJavaOptions']} -XX:ArchiveClassesAtExit={into}"
    spark = build_spark_session(SparkSettings(master="local[2]", app_name="btc-anomaly-class-archive", extra_conf=conf))
    warm_up_aggregation(spark)
    gateway = spark.sparkContext._gateway
    spark.stop()
    # The JVM writes the archive as it exits. pyspark's gateway JVM exits at the end of its stdin:
    # close it and wait, so the parent finds the whole archive when this process ends.
    jvm = getattr(gateway, "proc", None)
    gateway.shutdown()
    if jvm is not None:
        jvm.stdin.close()
        jvm.wait(timeout=300)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="btc-anomaly spark-class-archive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dump:
        _dump(args.dump)
        return 0
    try:
        path, seconds = build_archive()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Spark class archive written in {seconds:.1f} s: {path} ({path.stat().st_size / 2**20:.0f} MB); "
          "local Spark sessions now start from it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
