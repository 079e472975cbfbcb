"""The Java class archive local Spark drivers start from: where it lives, when it is used, how it is built.

No JVM here (writing an archive takes a ~25 s Spark run; ``benchmarks/bench_day_pipeline.py``
builds and uses a real one): the child process that dumps the classes is replaced by one that
writes (or fails to write) the file, so the parent's handling is what is tested.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from btc_anomaly_assets.aggregates import spark_class_archive as archive


def test_the_folder_defaults_to_the_user_cache_and_can_be_switched_off(monkeypatch, tmp_path):
    monkeypatch.delenv(archive.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert archive.archive_folder() == tmp_path / "cache" / "btc-anomaly-assets"
    monkeypatch.setenv(archive.ENV, str(tmp_path / "mine"))
    assert archive.archive_folder() == tmp_path / "mine"
    for off in ("off", "OFF", "none"):
        monkeypatch.setenv(archive.ENV, off)
        assert archive.archive_folder() is None and archive.archive_path() is None and archive.java_options() == ""


def test_the_name_changes_with_the_jars_and_the_java_runtime(tmp_path):
    jars = tmp_path / "pyspark" / "jars"
    jars.mkdir(parents=True)
    (jars / "spark-core.jar").write_bytes(b"x" * 10)
    java = tmp_path / "java"
    java.write_bytes(b"jvm")
    first = archive.runtime_digest(tmp_path / "pyspark", str(java))
    assert archive.runtime_digest(tmp_path / "pyspark", str(java)) == first
    (jars / "spark-core.jar").write_bytes(b"x" * 11)  # an upgraded jar
    assert archive.runtime_digest(tmp_path / "pyspark", str(java)) != first
    second = archive.runtime_digest(tmp_path / "pyspark", str(java))
    other_java = tmp_path / "java17"
    other_java.write_bytes(b"another jvm")
    assert archive.runtime_digest(tmp_path / "pyspark", str(other_java)) != second


def test_sessions_get_the_archive_only_once_it_exists(monkeypatch, tmp_path):
    monkeypatch.setenv(archive.ENV, str(tmp_path))
    path = archive.archive_path()
    assert path.parent == tmp_path and path.name.startswith("spark-") and path.suffix == ".jsa"
    assert archive.java_options() == ""
    path.write_bytes(b"archive")
    assert archive.java_options() == f"-XX:SharedArchiveFile={path}"


def _fake_child(writes: bytes | None, returncode: int = 0, output: str = ""):
    def run(cmd, **kwargs):
        assert cmd[1:3] == ["-m", archive.MODULE] and cmd[3] == "--dump"
        assert archive.MODULE == archive.__name__
        assert kwargs["env"][archive.ENV] == "off"  # the dumping JVM must not start from an old archive
        if writes is not None:
            Path(cmd[4]).write_bytes(writes)
        return subprocess.CompletedProcess(cmd, returncode, output, "")

    return run


def test_a_built_archive_is_moved_into_place_whole(monkeypatch, tmp_path):
    monkeypatch.setenv(archive.ENV, str(tmp_path / "new-folder"))
    monkeypatch.setattr(archive.subprocess, "run", _fake_child(b"classes"))
    path, seconds = archive.build_archive()
    assert path == archive.archive_path() and path.read_bytes() == b"classes" and seconds >= 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left


@pytest.mark.parametrize(("writes", "returncode"), [(None, 0), (b"", 0), (b"half", 1)])
def test_a_failed_build_says_so_and_leaves_no_archive(monkeypatch, tmp_path, writes, returncode):
    monkeypatch.setenv(archive.ENV, str(tmp_path))
    monkeypatch.setattr(archive.subprocess, "run", _fake_child(writes, returncode, "java.lang.OutOfMemoryError\n"))
    with pytest.raises(RuntimeError, match=r"the JVM wrote no class archive .*\.partial \(exit \d\)") as raised:
        archive.build_archive()
    assert "OutOfMemoryError" in str(raised.value)
    assert list(tmp_path.iterdir()) == [] and archive.java_options() == ""


def test_a_build_that_never_ends_is_stopped_and_named(monkeypatch, tmp_path):
    monkeypatch.setenv(archive.ENV, str(tmp_path))

    def hang(cmd, **kwargs):
        Path(cmd[4]).write_bytes(b"half an archive")
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(archive.subprocess, "run", hang)
    with pytest.raises(RuntimeError, match=r"did not finish within 5 s"):
        archive.build_archive(timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_the_command_reports_a_switched_off_archive(monkeypatch, capsys):
    monkeypatch.setenv(archive.ENV, "off")
    assert archive.main([]) == 1
    assert "SPARK_CLASS_ARCHIVE is off" in capsys.readouterr().err
