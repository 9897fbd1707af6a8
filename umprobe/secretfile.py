"""Secret and private-key files: reading the echo peer's shared secret, and who else may read such files.

The secret (`--secret-file`, `secret_file =`) is the file's content with surrounding whitespace stripped, at
least `MIN_SECRET_BYTES` bytes. It is read once and never logged or shown (tests/test_security.py greps
every output for it).

A private file (the shared secret, a client certificate's key, the peer's TLS key) that its group or every
user may read gets a warning naming the file, its mode and who may read it, never an error: the command
line prints it on stderr (`warn_if_exposed`), the daemon logs it at start and on every reload
(`log_exposed`). Only read bits count: they are what lets a secret leak. On Windows ACLs are not mode bits,
so nothing is judged there.

One exception, for the daemon: a group read bit for the group the daemon runs as (`own_gid`, which
umprobe.daemon passes) is how a root-owned key is handed to a service account (``root:umprobe``, mode 0640,
as deploy/systemd/umprobe.service sets up), so it is not warned about. The command line cannot tell: this
module runs in the echo peer, which must run on Windows, so it asks the system for no user or group
(tests/peer/test_portability.py) and names every group read bit.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from umprobe.errors import UserError
from umprobe.logs import log_event

if TYPE_CHECKING:
    from umprobe.config import Config

__all__ = [
    "MIN_SECRET_BYTES",
    "Exposure",
    "config_exposures",
    "exposure",
    "log_exposed",
    "read_secret",
    "warn_if_exposed",
]

MIN_SECRET_BYTES = 16


@dataclass(frozen=True, slots=True)
class Exposure:
    """A private file other users may read: `what` names it (an option or a config key), `mode` its bits,
    `gid` the file's group."""

    what: str
    path: str
    mode: int  # the permission bits, stat.S_IMODE
    gid: int = 0

    @property
    def readers(self) -> str:
        """Who besides the owner may read it: "every user" or "its group (gid N)"."""
        return "every user" if self.mode & stat.S_IROTH else f"its group (gid {self.gid})"

    @property
    def mode_text(self) -> str:
        return f"{self.mode:04o}"

    def message(self) -> str:
        """One line: what, the path, the mode and the fix."""
        return (
            f"{self.what} {self.path} is readable by {self.readers} (mode {self.mode_text}); "
            f"`chmod 600 {self.path}`"
        )


def exposure(path: str | Path, *, what: str, own_gid: int | None = None) -> Exposure | None:
    """An `Exposure` when every user, or its group (unless that is `own_gid`), may read `path` (POSIX),
    else None. A file that cannot be examined gives None: whoever opens it says why it cannot."""
    if os.name != "posix":
        return None
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    mode = stat.S_IMODE(info.st_mode)
    if not mode & stat.S_IROTH and not (mode & stat.S_IRGRP and info.st_gid != own_gid):
        return None
    return Exposure(what=what, path=str(path), mode=mode, gid=info.st_gid)


def warn_if_exposed(path: str | Path | None, *, what: str) -> Exposure | None:
    """The command line's check: print one warning line on stderr when `path` is readable by others."""
    found = None if path is None else exposure(path, what=what)
    if found is not None:
        print(f"umprobe: warning: {found.message()}", file=sys.stderr)
    return found


def config_exposures(config: Config, *, own_gid: int | None = None) -> list[Exposure]:
    """Every private file `config` names (module key files, `[[rtp]]` secret and key files) that others may
    read (`exposure`), each path once, in config order."""
    named: list[tuple[str, str]] = []
    for module in config.modules.values():
        if module.tls is not None and module.tls.key_file:
            named.append((f"modules.{module.name}.key_file", module.tls.key_file))
    for rtp in config.rtp:
        if rtp.secret_file:
            named.append((f"secret_file of [[rtp]] peer {rtp.name}", rtp.secret_file))
        if rtp.spec.tls is not None and rtp.spec.tls.key_file:
            named.append((f"key_file of [[rtp]] peer {rtp.name}", rtp.spec.tls.key_file))
    found: list[Exposure] = []
    seen: set[str] = set()
    for what, path in named:
        if path in seen:
            continue
        seen.add(path)
        item = exposure(path, what=what, own_gid=own_gid)
        if item is not None:
            found.append(item)
    return found


def log_exposed(config: Config, logger: logging.Logger, *, own_gid: int | None = None) -> list[Exposure]:
    """The daemon's check: one warning log line per private file of `config` that others may read."""
    found = config_exposures(config, own_gid=own_gid)
    for item in found:
        log_event(
            logger,
            logging.WARNING,
            "private file is readable by other users",
            file=item.path,
            mode=item.mode_text,
            readable_by=item.readers,
            gid=item.gid,
            what=item.what,
            fix=f"chmod 600 {item.path}",
        )
    return found


def read_secret(path: str | Path, *, what: str = "--secret-file", warn: bool = True) -> bytes:
    """The secret in `path`; `UserError` with one line naming `what` and the path if it is unusable.

    With `warn`, a file its group or every user may read gets a warning on stderr (`warn_if_exposed`).
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
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
    if warn:
        warn_if_exposed(path, what=what)
    return secret
