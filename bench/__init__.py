"""Serving benchmarks (issue 8): `python -m bench run [--quick | --smoke]`. See docs/benchmarks.md."""
