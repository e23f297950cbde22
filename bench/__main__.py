"""`python -m bench [--quick]` (also `hybridspend bench`): every benchmark on embedded services."""

import argparse

from .run import main

parser = argparse.ArgumentParser(prog="python -m bench", description=main.__doc__)
parser.add_argument("--quick", action="store_true", help="smaller inputs: a smoke test, not a result")
main(quick=parser.parse_args().quick)
