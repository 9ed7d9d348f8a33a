"""The installed package's version ("unknown" in a source tree that was never installed)."""

from importlib import metadata

try:
    __version__ = metadata.version("diffunlearn")
except metadata.PackageNotFoundError:
    __version__ = "unknown"
