"""``fusejit.scipy``: SciPy's names over ``fusejit.numpy`` (``special.logsumexp``)."""

from fusejit.scipy import special

__all__ = ["special"]
