"""Benchmarks and the demo: logdist roles run as separate processes, measured from outside."""
