"""Argument checks shared by the media codecs: our own misuse raises ValueError naming the value."""

from __future__ import annotations

__all__ = ["check_uint"]


def check_uint(name: str, value: int, bits: int) -> None:
    """Raise ValueError unless `value` is an int (not a bool) that fits in `bits` unsigned bits."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be an integer in 0..{(1 << bits) - 1}, got {value!r}")
