"""The ``fusejit`` command line: ``fusejit demo`` and ``fusejit bench``."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusejit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the main example")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        example = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"
        sys.argv = [str(example), *rest]
        runpy.run_path(str(example), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
