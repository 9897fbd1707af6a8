"""umprobe: active reachability probe and synthetic monitor for Exchange UM voice infrastructure."""

from umprobe._version import __version__

__all__ = ["__version__"]
