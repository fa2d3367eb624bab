"""Shared pytest setup. Puts tests/ on sys.path so tests can ``from strategies import ...``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Kernels compile in this process unless a test asks for compile workers: tests count
# compilations per process, and pytest-xdist already runs one process per core.
import os  # noqa: E402

os.environ.setdefault("FUSEJIT_COMPILE_WORKERS", "0")
# The CUDA tests run on Numba's CUDA simulator unless told otherwise (bench/gpu_check.sh
# sets 0 on a GPU machine); Numba reads this when it is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
