"""The architecture the README's "Where things are" map promises, checked on the source itself.

- Dagster is imported only by the wiring modules (assets, checks, sensors, schedules, resources)
  and the few shared modules named below; a stage's logic stays plain Python with unit tests.
- A stage's logic imports only ``common`` and the stages before it; only wiring may reach across.
- No module is longer than ~500 lines unless it is listed as one cohesive thing.
- Benchmarks never import the test package (shared fakes and data live in ``btc_anomaly_testing``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "btc_anomaly_assets"

# Pipeline order: a logic module of a stage may import common and the stages to its left.
STAGES = ["common", "ingest", "aggregates", "detection", "incidents", "explain", "forecast", "alerts", "live",
          "instance", "dashboard", "cli"]
WIRING_NAMES = {"assets", "checks", "sensors", "schedules", "resources"}
# Shared modules that must speak Dagster: settings hand out EnvVar, partitions are a Dagster
# definition, dagster_helpers hold asset keys and metadata helpers, the instance is Dagster's.
OTHER_DAGSTER_MODULES = {
    "btc_anomaly_assets.definitions",
    "btc_anomaly_assets.common.settings",
    "btc_anomaly_assets.common.partitions",
    "btc_anomaly_assets.common.dagster_helpers",
}
DAGSTER_STAGES = {"instance", "cli"}  # the instance and the CLI drive Dagster itself
MAX_LINES = 500
# Longer modules that are one cohesive thing (the README map says the same).
COHESIVE = {
    "btc_anomaly_assets/dashboard/queries.py": "every SQL query the dashboard and report run, one per chart",
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "btc_anomaly_assets" else None


def _is_wiring(module: str) -> bool:
    return module.rsplit(".", 1)[-1] in WIRING_NAMES


def test_only_wiring_modules_import_dagster():
    offenders = []
    for path in _modules():
        module = _dotted(path)
        speaks_dagster = any(i == "dagster" or i.startswith(("dagster.", "dagster_")) for i in _imports(path))
        allowed = _is_wiring(module) or module in OTHER_DAGSTER_MODULES or _stage(module) in DAGSTER_STAGES
        if speaks_dagster and not allowed:
            offenders.append(module)
    assert not offenders, f"logic modules importing Dagster (move the wiring to assets/sensors/resources): {offenders}"


def test_every_module_lives_in_a_known_stage():
    loose = [_dotted(p) for p in _modules() if _stage(_dotted(p)) is None and p.parent == PACKAGE
             and p.name not in ("__init__.py", "definitions.py")]
    unknown = sorted({_stage(_dotted(p)) for p in _modules()} - set(STAGES) - {None, "data"})
    assert not loose, f"modules at the package top (put them in a stage or common): {loose}"
    assert not unknown, f"packages not in the README map / STAGES: {unknown}"


def test_logic_imports_only_common_and_earlier_stages():
    backwards = []
    for path in _modules():
        module = _dotted(path)
        stage = _stage(module)
        if stage is None or _is_wiring(module) or stage not in STAGES:
            continue
        for imported in _imports(path):
            other = _stage(imported)
            if other in STAGES and STAGES.index(other) > STAGES.index(stage):
                backwards.append(f"{module} -> {imported}")
    assert not backwards, f"logic importing a later stage: {sorted(set(backwards))}"


def test_no_module_hides_its_structure_in_length():
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules()}
    too_long = {path: n for path, n in long.items() if n > MAX_LINES and path not in COHESIVE}
    assert not too_long, f"modules over {MAX_LINES} lines (split them, or list them as cohesive): {too_long}"


def test_benchmarks_do_not_import_the_tests():
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "benchmarks").glob("*.py"))
                 if any(i.split(".")[0] == "btc_anomaly_assets_tests" for i in _imports(p))]
    assert not offenders, f"benchmarks importing the test package: {offenders}"
