"""deskpulse's processing service: the Faust worker, the pure KPI core, Redis state."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deskpulse")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
