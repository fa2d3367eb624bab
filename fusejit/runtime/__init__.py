"""Executables, buffers, caches and devices."""
