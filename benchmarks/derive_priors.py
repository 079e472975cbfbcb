"""Re-derive the shipped priors table from the real blocks in the repository.

    PYTHONPATH=$PWD python -m benchmarks.derive_priors            # rewrite the shipped file
    PYTHONPATH=$PWD python -m benchmarks.derive_priors --check    # exit 1 if it would change
    PYTHONPATH=$PWD python -m benchmarks.derive_priors --days 13 --out /tmp/p13.json   # one day only

Inputs (``btc_anomaly_testing.fixture_paths``): the Blockchair dump excerpts of 13 and 14 Aug 2025,
31 complete blocks (see ``btc_anomaly_testing.real_priors`` for the first-seen series).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from btc_anomaly_assets.detection.derive_priors import to_json
from btc_anomaly_assets.detection.priors import BUILTIN_PRIORS_FILE
from btc_anomaly_testing.real_priors import DAYS, build_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[13, 14], choices=sorted(DAYS))
    parser.add_argument("--out", type=Path, default=BUILTIN_PRIORS_FILE)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    text = to_json(build_table(tuple(args.days)))
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh derivation'}")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text):,} bytes, days {args.days})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
