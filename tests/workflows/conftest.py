"""The time-skipping fixtures of tests/workflows (tests/workflows/driver.py)."""

from tests.workflows.driver import incident, skipping_env

__all__ = ["incident", "skipping_env"]
