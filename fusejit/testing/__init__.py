"""Testing tools built on top of fusejit (never imported by fusejit itself).

``fusejit.testing.fuzz``: a differential fuzzer that runs random NumPy-style programs as
NumPy, fusejit eager, the IR interpreter, ``jit(fuse=False)`` and ``jit``, and compares.
"""
