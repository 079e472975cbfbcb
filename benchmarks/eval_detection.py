"""Detection evaluation: physically possible events injected into the real blocks of 13-14 Aug 2025.

    PYTHONPATH=$PWD python -m benchmarks.eval_detection                  # both days, 2 seeds (~6 min on 2 cores)
    PYTHONPATH=$PWD python -m benchmarks.eval_detection --days 14 --seeds 0 --sizes beyond   # quick
    PYTHONPATH=$PWD python -m benchmarks.eval_detection --no-held-out      # skip the held-out priors setting

Prints, per event kind and size, the share flagged at >= medium in the event's minute, per
position of the event block in a fresh window (1st / 2nd / 3rd block the detector sees, or warm
after 6 blocks), for v1 ("before") and v2 ("after") in the same run, plus the false-alarm rate on
the untouched blocks (kind ``none``). See ``btc_anomaly_testing.detection_eval`` for the rules and
``btc_anomaly_testing.events`` for the events. Exit code 1 when v2 misses the issue's thresholds
(recall >= 90 % for every size beyond the real range, in all positions and in the first three
blocks; false alarms <= 1 in 20 untouched blocks).
"""

from __future__ import annotations

import argparse
import sys
import time

from btc_anomaly_testing import detection_eval
from btc_anomaly_testing.events import EVENTS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[13, 14], choices=[13, 14])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--kinds", nargs="+", choices=sorted(EVENTS), default=None)
    parser.add_argument("--sizes", choices=["all", "beyond"], default="all")
    parser.add_argument("--positions", nargs="+", choices=list(detection_eval.POSITIONS), default=None)
    parser.add_argument("--no-held-out", action="store_true",
                        help="skip v2 with priors derived from the other day only (an out-of-sample check)")
    parser.add_argument("--csv", help="also write every case to this CSV file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = detection_eval.run(days=tuple(args.days), seeds=tuple(args.seeds), kinds=args.kinds, sizes=args.sizes,
                                 positions=args.positions, held_out=not args.no_held_out)
    elapsed = time.perf_counter() - started
    cases = int((results["setting"] == "after").sum())
    settings = sorted(set(results["setting"]))
    print(f"# detection evaluation: days {args.days}, seeds {args.seeds}; {cases} cases x {len(settings)} settings "
          f"({', '.join(settings)}) in {elapsed:.0f} s\n")
    print(detection_eval.markdown(results))
    untouched = results[results["kind"] == "none"]
    for setting in settings:
        part = untouched[untouched["setting"] == setting]
        alarms = part[part["flagged"]]
        print(f"\nfalse alarms {setting}: {len(alarms)} of {len(part)} untouched block-evaluations"
              + (": " + "; ".join(f"{r.block}@{r.position}:{r.by}" for r in alarms.itertuples()) if len(alarms) else ""))
    after = results[(results["setting"] == "after") & (results["kind"] != "none")]
    print("\nv2 evidence that flagged the events:",
          after.loc[after["flagged"], "by"].str.split(",").explode().value_counts().to_dict())
    if args.csv:
        results.to_csv(args.csv, index=False)
    failures = detection_eval.verdict(results)
    print("\nv2 meets the thresholds" if not failures else "\nv2 misses:\n- " + "\n- ".join(failures))
    if "held_out" in settings:
        held = detection_eval.verdict(results, setting="held_out")
        print("\nv2 with held-out priors (out of sample, not a gate):"
              + (" meets the thresholds" if not held else "\n- " + "\n- ".join(held)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
