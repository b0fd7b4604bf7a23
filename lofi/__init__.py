"""LoFi: low-fidelity end-to-end video encoder optimisation for temporal action localization."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lofi")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+checkout"
