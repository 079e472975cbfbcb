"""The fault table: every fault we know how to inject, what it lost, duplicated or left pending.

    python benchmarks/faults.py [--only NAME ...] [--steps raw_transactions,...] [--out table.md]

Each fault runs the real CLI (`btc-anomaly backfill` over 2025-08-13 00:00-00:30, the bundled
sample's first 4 blocks and the 19,609 BTC transfer at 00:18) in a folder of its own, against
loopback fakes of the services, then counts against a clean reference run of the same range.
`lost` counts raw transactions, warehouse rows and alerted items the reference has and the
faulted folder does not (plus unreadable lake files); `duplicated` counts raw hashes and table
keys stored twice and messages delivered twice. Needs root for the disk-full row (a tmpfs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btc_anomaly_testing import fault_scenarios as faults  # noqa: E402
from btc_anomaly_testing.faults import STEPS, TABLE_HEADER  # noqa: E402

ALL = ("sigkill", "claude-down", "slack-down", "blockchair-430", "blockchair-503", "corrupt-lake", "locked-duckdb",
       "disk-full", "collector-disconnect")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=ALL, default=list(ALL))
    parser.add_argument("--steps", default=",".join(STEPS), help="steps to SIGKILL in (comma-separated)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="btc-faults-") as tmp:
        root = Path(tmp)
        ref, census = faults.reference(root)
        print(f"reference: {census.raw_rows:,} raw rows, {sum(census.delivered.values())} alert message(s), "
              f"{len(census.alerted_items)} alerted item(s), {ref.runs[0].seconds:.0f} s", flush=True)
        runs = {
            "claude-down": lambda: [faults.claude_down(root, ref, census)],
            "slack-down": lambda: [faults.slack_down(root, ref, census)],
            "blockchair-430": lambda: [faults.blockchair_cool_off(root, ref, census, 430)],
            "blockchair-503": lambda: [faults.blockchair_cool_off(root, ref, census, 503)],
            "corrupt-lake": lambda: [faults.corrupt_lake_file(root, ref, census)],
            "locked-duckdb": lambda: [faults.locked_duckdb(root, ref, census)],
            "disk-full": lambda: [faults.disk_full(root, ref, census)],
            "collector-disconnect": lambda: [faults.collector_disconnect(root)],
            "sigkill": lambda: [faults.sigkill(root, ref, census, step) for step in args.steps.split(",") if step],
        }
        lines = [TABLE_HEADER]
        print(TABLE_HEADER, flush=True)
        for name in args.only:
            try:
                outcomes = runs[name]()
            except Exception as exc:  # a fault we could not inject is a row too, never a silent gap
                print(f"| {name} | could not run: {type(exc).__name__}: {exc} | | | | | |", flush=True)
                lines.append(f"| {name} | could not run: {exc} | | | | | |")
                continue
            for outcome in outcomes:
                print(outcome.row(), flush=True)
                lines.append(outcome.row())
    print(f"\n{len(lines) - 1} rows in {time.monotonic() - began:.0f} s")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
