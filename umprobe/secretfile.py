"""Reading the shared secret of the RTP echo peer (`--secret-file`, `secret_file =`): one set of rules.

The secret is the file's content with surrounding whitespace stripped, at least `MIN_SECRET_BYTES` bytes. On
POSIX a file every user may read gets a warning on stderr, not an error (Windows ACLs are not mode bits, so
nothing is judged there). It is read once and never logged or shown.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from umprobe.errors import UserError

__all__ = ["MIN_SECRET_BYTES", "read_secret"]

MIN_SECRET_BYTES = 16


def read_secret(path: str | Path, *, what: str = "--secret-file", warn: bool = True) -> bytes:
    """The secret in `path`; `UserError` with one line naming `what` and the path if it is unusable."""
    file = Path(path)
    try:
        raw = file.read_bytes()
        mode = file.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    secret = raw.strip()
    if not secret:
        raise UserError(f"{what} {path} is empty")
    if len(secret) < MIN_SECRET_BYTES:
        raise UserError(
            f"{what} {path}: the secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed"
        )
    if warn and os.name == "posix" and mode & stat.S_IROTH:
        print(
            f"umprobe: warning: {what} {path} is readable by every user; `chmod 600 {path}`", file=sys.stderr
        )
    return secret
