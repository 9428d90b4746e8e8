"""Attack tests for issue 18 (see conftest.py)."""
