"""``import fusejit.numpy as fnp``: NumPy's names, traceable and differentiable.

See ``fusejit.tracer.numpy_api`` for the implementation.
"""

from fusejit.tracer.numpy_api import *  # noqa: F403
from fusejit.tracer.numpy_api import __getattr__  # noqa: F401 - names NumPy has and we don't
from fusejit.tracer.numpy_ext import *  # noqa: F403
