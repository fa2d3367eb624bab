"""The ``fusejit`` command line: ``fusejit demo`` and ``fusejit bench``.

Both run files of the repository checkout that sit next to the package (``examples/``,
``bench/``); an installed wheel without them says so instead of failing obscurely.
"""

from __future__ import annotations

import argparse
import importlib.util
import runpy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _repo_file(*parts: str, command: str) -> Path:
    path = REPO_ROOT.joinpath(*parts)
    if not path.is_file():
        raise SystemExit(
            f"fusejit {command}: {path} not found; this command runs the repository's "
            f"{parts[0]}/ directory, so run it from a checkout of fusejit (pip install -e .)"
        )
    return path


# The demo's packages (module -> pip name): the 'demo' extra of pyproject.toml.
DEMO_PACKAGES = {"sklearn": "scikit-learn", "tqdm": "tqdm", "matplotlib": "matplotlib"}


def demo(rest: list[str]) -> int:
    """Runs ``examples/train_digits.py`` (the digits CNN) with ``rest`` as its options."""
    example = _repo_file("examples", "train_digits.py", command="demo")
    missing = [pip for module, pip in DEMO_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing and not any(a in ("-h", "--help") for a in rest):
        raise SystemExit(
            f"fusejit demo needs the 'demo' extra ({', '.join(missing)} not installed): "
            "pip install -e '.[demo]'  (or run: make demo)"
        )
    sys.argv = [str(example), *rest]
    try:
        runpy.run_path(str(example), run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def bench(rest: list[str]) -> int:
    """Loads ``bench/harness.py`` as a module and runs its command line on ``rest``."""
    path = _repo_file("bench", "harness.py", command="bench")
    spec = importlib.util.spec_from_file_location("fusejit_bench_harness", path)
    assert spec is not None and spec.loader is not None
    harness = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = harness
    spec.loader.exec_module(harness)
    return int(harness.main(rest))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusejit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "demo",
        help="train a CNN on scikit-learn's digits with a jitted step, dump its IR, compare fused vs eager; "
        "'fusejit demo --help' for options",
        add_help=False,
    )
    sub.add_parser(
        "bench",
        help="benchmark workloads W1-W10: NumPy eager vs fusejit unfused/fused (vs JAX, PyTorch); "
        "'fusejit bench --help' for options",
        add_help=False,
    )
    sub.add_parser("coverage", help="print which NumPy functions fusejit.numpy supports (docs/numpy_coverage.md)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        return demo(rest)
    if args.command == "coverage":
        from fusejit.tracer.numpy_coverage import markdown

        sys.stdout.write(markdown())
        return 0
    return bench(rest)


if __name__ == "__main__":
    sys.exit(main())
