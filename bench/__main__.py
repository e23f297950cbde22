"""`python -m bench` (also `hybridspend bench`): every benchmark on embedded services."""

import argparse

from .results import load, write_readme
from .run import main

parser = argparse.ArgumentParser(
    prog="python -m bench",
    description="Runs every benchmark on an embedded broker and PostgreSQL. A full result is the median of "
                "--runs full runs (default 3) with each figure's spread, written to bench/results.json with the "
                "commit, cores, CPU model and broker profile; the first run seeds the report's and the panels' "
                "databases (never timed), the others reuse them; --quick is a smoke test written to "
                "bench/results-quick.json.")
parser.add_argument("--quick", action="store_true", help="smaller inputs, one run: a smoke test, never a result")
parser.add_argument("--runs", type=int, default=None, help="how many passes (default 3 full, 1 quick)")
parser.add_argument("--readme", action="store_true",
                    help="only rewrite the figures table of docs/performance.md from the committed bench/results.json")
args = parser.parse_args()
if args.readme:
    write_readme(load())
else:
    main(quick=args.quick, runs=args.runs)
