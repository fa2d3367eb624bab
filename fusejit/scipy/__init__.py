"""``fusejit.scipy``: SciPy's names over ``fusejit.numpy`` (``special.logsumexp``,
``linalg.solve_triangular``)."""

from fusejit.scipy import linalg, special

__all__ = ["linalg", "special"]
