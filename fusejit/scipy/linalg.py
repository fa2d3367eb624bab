"""``fusejit.scipy.linalg``: SciPy's triangular solve, traceable and differentiable
(the ``triangular_solve`` primitive; see ``fusejit.tracer.linalg``)."""

from fusejit.tracer.linalg import solve_triangular

__all__ = ["solve_triangular"]
