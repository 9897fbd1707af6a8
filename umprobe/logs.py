"""Structured one-line logs for the daemon: logfmt (`key=value`) text or JSON lines, on stdlib `logging`.

Named `logs`, not `logging`, so that nothing ever shadows the standard library module.

How to log an event: `log_event(logger, logging.INFO, "probe state changed", probe=..., target=...)`. The
fields travel on the record (`extra={"umprobe_fields": ...}`) and the formatters here render them after
`ts`, `level` and `msg`, one event per line whatever the field values contain (newlines are escaped; a
traceback becomes one escaped `exc` field). Records from other libraries get the same treatment plus a
`logger` field. A field whose *name* says it is a secret (password, passphrase, secret, token,
authorization) is written as `[redacted]`; the probes' configuration holds only file paths, but the rule
holds for whatever is added later.

`ProbeStateLog` turns a stream of probe results into the few lines an operator wants: the first result of
each (probe, address), and every change of state (up -> down, down -> up, or a different failure reason)
once, never once per interval. `ProbeStateLog.threshold_changes` adds one line when a listener's up/down
state by its module's thresholds (umprobe.updown) changes: up -> down, down -> up, and a first judgement of
"down" (a first "up" is the normal start and stays quiet).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, TextIO

if TYPE_CHECKING:
    from umprobe.config import ProbeConfig
    from umprobe.probes.result import ProbeResult
    from umprobe.store import ThresholdChange

__all__ = [
    "FIELDS_ATTR",
    "LOGGER_NAME",
    "JsonFormatter",
    "LogFormat",
    "LogfmtFormatter",
    "ProbeStateLog",
    "ResourceAlarm",
    "configure_logging",
    "log_event",
    "parse_level",
]

LOGGER_NAME = "umprobe"
FIELDS_ATTR = "umprobe_fields"

LogFormat = Literal["text", "json"]

_SECRET_NAME = re.compile(r"pass(word|phrase)?|secret|token|authorization|credential", re.IGNORECASE)
_REDACTED = "[redacted]"
_BARE_VALUE = re.compile(r"[^\s\"=\\]+")
_HANDLER_MARK = "_umprobe_handler"


def log_event(
    logger: logging.Logger,
    level: int,
    msg: str,
    /,
    *,
    exc_info: BaseException | None = None,
    **fields: object,
) -> None:
    """Log one structured event: a short constant message and key=value fields (None values are left out).

    `exc_info` adds the exception's traceback as one escaped `exc` field.
    """
    if logger.isEnabledFor(level):
        logger.log(level, msg, exc_info=exc_info, extra={FIELDS_ATTR: fields}, stacklevel=2)


def parse_level(level: str) -> int:
    """'debug', 'info', 'warning', 'error' (any case) -> the logging level number; ValueError otherwise."""
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    return number


def _fields(record: logging.LogRecord) -> dict[str, object]:
    out: dict[str, object] = {
        "ts": datetime.fromtimestamp(record.created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": record.levelname.lower(),
        "msg": record.getMessage(),
    }
    if not record.name.startswith(LOGGER_NAME):
        out["logger"] = record.name
    extra = getattr(record, FIELDS_ATTR, None)
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            if value is None:
                continue
            name = str(key)
            if name in ("ts", "level", "msg", "logger"):
                name = f"field_{name}"
            out[name] = _REDACTED if _SECRET_NAME.search(name) else value
    return out


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return formatter.formatException(record.exc_info)
    if record.exc_text:
        return record.exc_text
    return None


def _logfmt_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(round(value, 6))
    elif isinstance(value, (list, tuple, set, frozenset)):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    if text and _BARE_VALUE.fullmatch(text):
        return text
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _logfmt_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", key) or "_"


class LogfmtFormatter(logging.Formatter):
    """`ts=... level=info msg="probe state changed" probe=cas01:5061/tls ...`: one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        exc = _exception_text(self, record)
        if exc:
            fields["exc"] = exc
        return " ".join(f"{_logfmt_key(k)}={_logfmt_value(v)}" for k, v in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the logfmt form."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        exc = _exception_text(self, record)
        if exc:
            fields["exc"] = exc
        return json.dumps(fields, default=str, ensure_ascii=False, separators=(",", ":"))


def configure_logging(*, fmt: LogFormat = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (default stderr) as one line of `fmt`; umprobe's own at `level`.

    Idempotent: a second call (on reload) replaces the handler installed by the first. Other libraries'
    records are shown from WARNING up.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(LOGGER_NAME).setLevel(parse_level(level))


_State = tuple[bool, str]  # (success, reason)

_LOCAL = "local_resource_error"


def _open_file_limits() -> tuple[int | None, int | None]:
    """The soft and hard open-file limits, from /proc/self/limits (Linux); (None, None) where there is none.

    Read from /proc rather than with the `resource` module, which Windows lacks: this module is also
    imported by the echo peer, which must run there (tests/peer/test_portability.py)."""
    try:
        with open("/proc/self/limits", encoding="ascii") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return (
                        None if soft == "unlimited" else int(soft),
                        None if hard == "unlimited" else int(hard),
                    )
    except (OSError, ValueError):
        pass
    return None, None


def _open_descriptors() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class ResourceAlarm:
    """The daemon's one voice about its own shortage: probe runs that failed with `local_resource_error`
    (out of file descriptors, memory, buffers or local ports).

    One ERROR line when the first one comes (with the open-file limit and how many descriptors are open),
    one ERROR reminder every `remind` seconds while they keep coming, and one INFO line once none has come
    for `quiet` seconds and fewer than `headroom` of the limit's descriptors are open. Never one per run:
    under the shortage every run could fail, and a log line per run would make it worse.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
        quiet: float = 5.0,
        remind: float = 300.0,
        headroom: float = 0.8,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._quiet = quiet
        self._remind = remind
        self._headroom = headroom
        self.active = False
        self._failed = 0
        self._since = self._last = self._reminded = self._checked = 0.0
        # Read now, while a descriptor is free: reading /proc needs one, and the alarm speaks when none is.
        self._limits = _open_file_limits()

    def failed(self, detail: str) -> None:
        now = self._clock()
        self._failed += 1
        self._last = now
        fds = "EMFILE" in detail or "ENFILE" in detail
        what = "out of file descriptors" if fds else "out of local resources"
        if not self.active:
            self.active, self._since, self._reminded = True, now, now
            soft, hard = self._limits
            log_event(
                self._logger,
                logging.ERROR,
                f"{what}: probe runs fail with reason local_resource_error (not the targets' fault) until "
                "they free up; raise the open-file limit (systemd LimitNOFILE=, ulimit -n) or lower "
                "scheduler.max_concurrency",
                limit=soft,
                hard_limit=hard,
                open=_open_descriptors(),
                detail=detail,
            )
        elif now - self._reminded >= self._remind:
            self._reminded = now
            log_event(
                self._logger,
                logging.ERROR,
                f"still {what}",
                failed_runs=self._failed,
                seconds=round(now - self._since, 1),
                open=_open_descriptors(),
                detail=detail,
            )

    def succeeded(self) -> None:
        if not self.active:
            return
        now = self._clock()
        if now - self._last < self._quiet or now - self._checked < 1.0:
            return
        self._checked = now
        soft, _hard = self._limits
        open_now = _open_descriptors()
        if open_now is None or (soft is not None and open_now > self._headroom * soft):
            return
        log_event(
            self._logger,
            logging.INFO,
            "file descriptors available again: probe runs are judged on their own again",
            failed_runs=self._failed,
            seconds=round(self._last - self._since, 1),
            open=open_now,
            limit=soft,
        )
        self.active, self._failed = False, 0


class ProbeStateLog:
    """Logs the first result and every state change of each (probe, address), once.

    A state is (success, reason): up -> down, down -> up and "down for a different reason" each produce
    one line; a probe that stays in one state stays quiet. Per-address, because a dual-stack listener can
    be up on IPv4 and down on IPv6.

    A `local_resource_error` result says nothing about its target (this host ran out of descriptors): it
    goes to the `ResourceAlarm` and leaves the probe's state as it was, so that a shortage is one line, not
    a storm of "state changed" lines for every probe, and what is logged afterwards compares with what the
    targets really did before.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(f"{LOGGER_NAME}.probe")
        self._states: dict[str, dict[tuple[str, int], _State]] = {}  # by (address, port)
        self._errors: dict[str, str] = {}
        self.alarm = ResourceAlarm(logging.getLogger(LOGGER_NAME))

    def observe(self, probe: ProbeConfig, results: Sequence[ProbeResult]) -> None:
        """Compare `results` with the last ones seen for `probe` and log what changed."""
        self._errors.pop(probe.id, None)
        local = [r for r in results if str(r.reason) == _LOCAL]
        for result in local:
            self.alarm.failed(result.detail)
        if local:
            results = [r for r in results if str(r.reason) != _LOCAL]
            if not results:
                return
        else:
            self.alarm.succeeded()
        known = self._states.setdefault(probe.id, {})
        seen = {(r.address, r.port): known[r.address, r.port] for r in local if (r.address, r.port) in known}
        # A name that stops resolving has one result without an address (dns_error) where it had one per
        # address, and a name that resolves again the other way round: that is a change of the probe's
        # state (compared with its best address before), not a first result, and no address is "gone".
        whole = bool(known) and all(not r.address for r in results) != all(not a for a, _ in known)
        for result in results:
            state: _State = (result.success, str(result.reason))
            seen[result.address, result.port] = state
            before = known.get((result.address, result.port))
            if before is None and whole:
                before = max(known.values())
            if before == state:
                continue
            level = logging.INFO if result.success else logging.WARNING
            log_event(
                self._logger,
                level,
                "probe first result" if before is None else "probe state changed",
                probe=probe.name,
                target=probe.target,
                address=result.address or None,
                family=result.family or None,
                module=probe.module,
                state="up" if result.success else "down",
                previous=None if before is None else ("up" if before[0] else "down"),
                reason=str(result.reason),
                previous_reason=None if before is None or before[1] == state[1] else before[1],
                phase=str(result.phase) if result.phase is not None else None,
                status=result.status_code,
                detail=None if result.success else result.detail,
                total_seconds=result.timings.total,
            )
        for address, _port in set() if whole else set(known) - set(seen):
            log_event(
                self._logger,
                logging.INFO,
                "probe address gone",
                probe=probe.name,
                target=probe.target,
                address=address or None,
            )
        self._states[probe.id] = seen

    def threshold_changes(self, probe: ProbeConfig, changes: Sequence[ThresholdChange]) -> None:
        """Log the threshold state changes `ResultStore.record` returned for one run of `probe`.

        With thresholds of 1/1 the threshold state is the run's own state, which the probe's state lines
        already tell: nothing more is logged (a storm of failures must stay one line per change)."""
        thresholds = probe.thresholds
        if thresholds.failures_before_down == 1 and thresholds.successes_before_up == 1:
            return
        for change in changes:
            if change.previous == "unknown" and change.state == "up":
                continue
            log_event(
                self._logger,
                logging.INFO if change.state == "up" else logging.WARNING,
                "listener threshold state changed",
                probe=probe.name,
                target=probe.target,
                address=change.address or None,
                module=probe.module,
                threshold_state=change.state,
                previous=change.previous,
                consecutive=change.consecutive,
                failures_before_down=thresholds.failures_before_down,
                successes_before_up=thresholds.successes_before_up,
            )

    def observe_error(self, probe: ProbeConfig, error: str, *, exc_info: BaseException | None = None) -> None:
        """A run that produced no results (a local configuration problem or a bug): logged once per text,
        with the traceback of `exc_info` if given."""
        if self._errors.get(probe.id) == error:
            return
        self._errors[probe.id] = error
        log_event(
            self._logger,
            logging.ERROR,
            "probe could not run",
            probe=probe.name,
            target=probe.target,
            module=probe.module,
            error=error,
            exc_info=exc_info,
        )

    def forget(self, keep: Collection[str]) -> None:
        """Drop the state of every probe id not in `keep` (after a reload removed them)."""
        for probe_id in [p for p in self._states if p not in keep]:
            del self._states[probe_id]
        for probe_id in [p for p in self._errors if p not in keep]:
            del self._errors[probe_id]
