"""The single source of umprobe's version."""

__all__ = ["__version__"]

__version__ = "0.1.0"
