"""fusejit's version (a leaf module: the runtime's cache key reads it without importing
the package's public API)."""

__version__ = "0.1.0"
