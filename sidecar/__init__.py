"""readiness-gate-sidecar: report a legacy application's readiness through a Pod readiness gate."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("readiness-gate-sidecar")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
