"""``import fusejit.numpy as fnp``: NumPy's names, traceable and differentiable.

See ``fusejit.tracer.numpy_api`` for the implementation; ``fnp.linalg`` (also importable
as ``fusejit.numpy.linalg``, although this module is not a package) is
``fusejit.tracer.linalg``.
"""

import sys as _sys

from fusejit.tracer import linalg
from fusejit.tracer.numpy_api import *  # noqa: F403
from fusejit.tracer.numpy_api import __getattr__  # noqa: F401 - names NumPy has and we don't
from fusejit.tracer.numpy_ext import *  # noqa: F403

_sys.modules.setdefault(__name__ + ".linalg", linalg)
