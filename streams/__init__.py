"""deskpulse's processing service: the Faust worker, the pure KPI core, Redis state."""

# Kept in step with pyproject.toml by tests/test_cli.py (importlib.metadata costs every
# command ~40 ms of start-up).
__version__ = "0.1.0"

__all__ = ["__version__"]
