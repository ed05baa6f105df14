"""Benchmarks that measure accel beside its anchors (phe, galois) in the same run."""
