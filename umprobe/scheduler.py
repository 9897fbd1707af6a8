"""The daemon's timetable: every probe once per interval, spread out, bounded, never overlapping itself.

Theory of operation
-------------------
Slots. A probe's runs are planned on a fixed grid: every `interval` seconds, at an offset inside the
interval that is a pure function of the probe id (the first 8 bytes of sha256(id) as a fraction of the
interval). The grid is anchored to the wall clock (unix time 0), like Prometheus anchors its scrapes, so a
probe fires at the same second of its interval before and after a restart or a reload, and N probes with
the same interval land on N pseudo-random, evenly distributed offsets: no thundering herd at start-up or
after a reload, and no need to remember anything to keep a phase. A new probe (at start or added by a
reload) waits for its first slot; nothing runs "now".

One timer loop, not one task per probe. The loop keeps a binary heap of (next due time, probe) and sleeps
until the earliest one (or until `update()` wakes it); when a slot is due it plans the next slot of that
probe and starts one short-lived task for the run. At 10,000 probes that is 10,000 heap entries (tens of
bytes each) instead of 10,000 sleeping coroutines with their frames and cancel scopes, the nursery holds
only the runs in flight, `update()` is a dictionary edit plus a heap push (no tasks to cancel or restart
to change a probe), and "is this probe still running?" is a flag on its entry. Heap entries of removed or
rescheduled probes are not searched out: each carries its entry's generation and is discarded when it
reaches the top.

A run: acquire the global `trio.CapacityLimiter(max_concurrency)`, then measure the lag (actual start
minus planned slot, which includes any wait for the limiter) for `store.observe_lag`, then call the probe
function with `deadline = start + probe.timeout` (the caller owns the deadline) between
`store.probe_started()` and `store.probe_finished()`, then `store.record(probe, results)`.

No overlap. If a probe's previous run is still going (slow, or waiting for the limiter) when its next slot
comes, that slot is skipped, counted (`skipped_slots`) and logged once per streak; runs are never queued,
so a saturated limiter sheds load instead of building a backlog, and there is at most one task per probe.

Reload (`update()`): ids are the identity. Unchanged probes keep their grid and any run in flight. A
changed probe (same id, other settings) takes the new settings at its next slot; if its interval changed,
its next slot is recomputed on the new grid. A removed probe is forgotten at once; a run of it that is
still in flight may finish, but its results (and those of a run started with settings that have since
changed) are dropped rather than recorded. A probe removed and added back while that run is still going
gets its old entry back, so even then it does not overlap itself.

Failures are data: the probe function returns results for every network or peer failure. What still
raises is ours (an unusable local TLS file, or a bug): it is logged once per probe and message and
recorded as nothing, so one bad probe never stops the other 9,999. A probe function that overruns its
deadline by more than `OVERRUN_GRACE` seconds is cancelled and logged the same way. That guard is a
watchdog, not a second deadline: when the event loop falls behind (a starved CPU), a run's own deadline and
a guard deadline would expire in the same loop pass, the outer guard would win, and the run would vanish
from the counters with a false "overran" although the probe was about to report its own timeout. The
watchdog starts at the deadline and then counts the grace in short ticks, each counted for at most twice
its length however late it comes, so a lagging loop gives a run more loop passes to finish, never fewer.
Nearly every run ends long before its deadline, so the watchdog is not a task from the start: each run puts
its deadline in a second heap of the timer loop (a push, and a flag when the run ends), the loop also wakes
for the earliest deadline of a run still in flight, and only then starts the ticking task for that run. (A
task per run that slept until the deadline and was cancelled when the run ended cost ~60-80 us of CPU per
run, a few per cent of a TCP probe.) A run that ends while the loop sleeps until its deadline moves that
wake-up to the next slot or deadline, so a finished run never wakes the loop.

Two kinds of job, one timetable. A job is a `ProbeConfig` (one SIP listener, `[[targets]]`) or an
`RtpProbeConfig` (one echo peer's RTP range, `[[rtp]]`); both carry `id`, `name`, `target`, `interval`
and `timeout`, and everything above (slots, spread, limiter, lag, deadline, no overlap, reload by id,
errors) treats them alike. They differ in two places only, both in `_call_probe`: which probe function
is called (`probe_fn(spec, deadline=, contexts=)` for SIP, `rtp_fn(spec, deadline=, cycle=, contexts=)`
for RTP) and where its result goes (`ResultSink.record` / `record_rtp`). The dispatch is one
`isinstance` on the job, so each branch is fully typed; a third probe kind is a third branch, not a
rewrite. (One job type with a `spec: SipProbeSpec | RtpProbeSpec` union was the alternative: it would
have pushed the union into every reader of `ProbeConfig.spec`, i.e. metrics, exporter, /probe, demo.)

RTP cycles. An RTP run measures one cycle of its sweep (`RtpProbeSpec.ports_for_cycle`), and the cycle is
a function of the slot, not of a counter: the slot whose wall-clock time falls in
[k x interval, (k + 1) x interval) measures cycle k mod cycles_per_sweep. Consecutive slots take
consecutive cycles, so the whole range is covered every cycles_per_sweep x interval seconds (1008 x 60 s,
about 17 hours, for 1024-65535 with the defaults), and since the grid is anchored to the wall clock a
restart or a reload continues the sweep where it was instead of starting again at cycle 0. A skipped slot
leaves its cycle's ports for the next sweep.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import logging
import math
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import trio

from umprobe.config import ProbeConfig, RtpProbeConfig
from umprobe.logs import LOGGER_NAME, ProbeStateLog, log_event
from umprobe.net.errors import TLSConfigError
from umprobe.probes import sip_options
from umprobe.probes.result import ProbeResult
from umprobe.probes.rtp import RtpProbeSpec, probe_rtp
from umprobe.probes.rtp_result import RtpResult
from umprobe.probes.sip_options import SipProbeSpec, TLSContextCache
from umprobe.store import ThresholdChange

__all__ = [
    "GC_THRESHOLDS",
    "OVERRUN_GRACE",
    "Job",
    "ProbeFunction",
    "ResultSink",
    "RtpProbeFunction",
    "Scheduler",
    "UpdateSummary",
    "phase_fraction",
    "tune_gc",
]

#: What the scheduler runs: a SIP listener probe or an RTP range sweep (see "Two kinds of job" above).
Job = ProbeConfig | RtpProbeConfig

OVERRUN_GRACE = 1.0
"""Seconds a probe function may run past its deadline before the scheduler cancels it (a bug guard)."""

# Slot arithmetic runs on numbers around 1.8e9 (seconds since 1970); a slot that is less than this
# fraction of an interval away counts as already passed, so float rounding can never fire a slot twice.
_SLOT_EPSILON = 1e-6
# The overrun watchdog's tick: OVERRUN_GRACE is counted in at least OVERRUN_GRACE / (2 x this) loop passes.
_WATCHDOG_TICK = 0.05
# Fire at most this many due slots before letting other tasks run (only matters after a long stall).
_FIRE_BATCH = 256

_log = logging.getLogger("umprobe.scheduler")

#: `gc.set_threshold` for the daemon process (Python's default is 700, 10, 10); see `tune_gc`.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Make the cyclic garbage collector rare in the daemon process, where it was the scheduler's largest
    source of lateness. With the default thresholds a young collection runs every 700 new container
    objects; at 10,000 listeners that is many times a second, and the objects of every run in flight (task,
    frames, cancel scopes, socket) survive a few of them, are promoted to the oldest generation and then
    die there, which soon triggers a full collection: measured at 10,000 listeners every 60 s with a
    scrape every 15 s, 11 to 15 full collections a minute of 0.3 to 1.1 s each, and scheduler lag p99 of
    0.9 to 1.9 s. Reference counting frees nearly everything the daemon makes (the store replaces results,
    renderers write strings), so the collector has little to find; with these thresholds it ran one full
    collection in that minute (28 ms) and lag p99 was 59 ms. Process-wide: `run_daemon` calls it, the
    library and the tests leave the collector alone."""
    gc.set_threshold(*GC_THRESHOLDS)


class ProbeFunction(Protocol):
    """What the scheduler calls for one run; `umprobe.probes.sip_options.probe` is the default."""

    def __call__(
        self, spec: SipProbeSpec, *, deadline: float, contexts: TLSContextCache | None = ...
    ) -> Coroutine[Any, Any, Sequence[ProbeResult]]: ...


class RtpProbeFunction(Protocol):
    """What the scheduler calls for one RTP run; `umprobe.probes.rtp.probe_rtp` is the default."""

    def __call__(
        self, spec: RtpProbeSpec, *, deadline: float, cycle: int, contexts: TLSContextCache | None = ...
    ) -> Coroutine[Any, Any, RtpResult]: ...


class ResultSink(Protocol):
    """The part of `umprobe.store.ResultStore` the scheduler writes to."""

    def record(
        self, probe: ProbeConfig, results: Sequence[ProbeResult]
    ) -> Sequence[ThresholdChange] | None: ...
    def record_rtp(self, probe: RtpProbeConfig, result: RtpResult) -> None: ...
    def observe_lag(self, seconds: float) -> None: ...
    def probe_started(self) -> None: ...
    def probe_finished(self) -> None: ...
    def slot_skipped(self) -> None: ...


@dataclass(frozen=True, slots=True)
class UpdateSummary:
    """What `Scheduler.update` did, for the reload log line."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: int = 0


def phase_fraction(probe_id: str) -> float:
    """Where in its interval a probe runs, in [0, 1): the first 8 bytes of sha256(id). Stable forever."""
    digest = hashlib.sha256(probe_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(eq=False, slots=True)
class _Entry:
    probe: Job
    fraction: float
    generation: int = 0
    due: float | None = None
    running: bool = False
    skip_streak: int = 0
    skipped: int = 0
    runs: int = 0


@dataclass(eq=False, slots=True)
class _Watch:
    """The overrun guard of one run in flight (see "Failures are data" above)."""

    guard: trio.CancelScope  # cancelled once the run has overrun `deadline` by OVERRUN_GRACE
    deadline: float
    ended: bool = False
    ticks: trio.CancelScope | None = None  # the watchdog task's scope, once the deadline passed mid-run


@dataclass(order=True, slots=True)
class _Slot:
    due: float
    seq: int
    entry: _Entry = field(compare=False)
    generation: int = field(compare=False)


class Scheduler:
    """Runs each probe once per interval until cancelled; see the module docstring for how.

    `store` receives lag, in-flight and results (`ResultSink`; normally a `umprobe.store.ResultStore`).
    `probe_fn`, `rtp_fn` and `wall_clock` are there for tests: fake probes, and the clock that anchors the
    grid. Call `update(jobs)` before or while `run()` runs.
    """

    def __init__(
        self,
        store: ResultSink,
        *,
        max_concurrency: int,
        contexts: TLSContextCache | None = None,
        probe_fn: ProbeFunction | None = None,
        rtp_fn: RtpProbeFunction | None = None,
        wall_clock: Callable[[], float] = time.time,
        state_log: ProbeStateLog | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self._store = store
        self._limiter = trio.CapacityLimiter(max_concurrency)
        self._contexts = contexts if contexts is not None else TLSContextCache()
        self._probe_fn: ProbeFunction = probe_fn if probe_fn is not None else sip_options.probe
        self._rtp_fn: RtpProbeFunction = rtp_fn if rtp_fn is not None else probe_rtp
        self._wall_clock = wall_clock
        self._states = state_log if state_log is not None else ProbeStateLog()
        self._rtp_states = _RtpStateLog()
        self._entries: dict[str, _Entry] = {}
        self._retired: dict[str, _Entry] = {}  # removed, but a run is still in flight
        self._heap: list[_Slot] = []
        self._seq = 0
        self._watches: list[tuple[float, int, _Watch]] = []  # by deadline: the runs' overrun guards
        self._sleep: trio.CancelScope | None = None  # the timer loop's wait, while it waits
        self._epoch: float | None = None  # trio time of unix time 0, set when run() starts
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self._skipped_total = 0
        self._dropped_total = 0

    # -- configuration ---------------------------------------------------------------------------------

    @property
    def max_concurrency(self) -> int:
        """The global bound on runs in flight; settable (a reload may change it)."""
        return int(self._limiter.total_tokens)

    @max_concurrency.setter
    def max_concurrency(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {value}")
        self._limiter.total_tokens = value

    @property
    def contexts(self) -> TLSContextCache:
        """The TLS context cache shared by every run; settable (the daemon gives a successful reload a new
        one, read in full before it is swapped in; runs in flight keep the contexts they started with)."""
        return self._contexts

    @contexts.setter
    def contexts(self, value: TLSContextCache) -> None:
        self._contexts = value

    def update(self, probes: Sequence[Job]) -> UpdateSummary:
        """Make `probes` (SIP probes and RTP sweeps) the set to run: unchanged ids keep their slots, changed
        ones take effect at their next slot, removed ones stop (their in-flight results are dropped).
        Raises ValueError on a duplicate id."""
        wanted: dict[str, Job] = {}
        for probe in probes:
            if probe.id in wanted:
                raise ValueError(f"duplicate probe id {probe.id!r}")
            wanted[probe.id] = probe
        removed = tuple(pid for pid in self._entries if pid not in wanted)
        for pid in removed:
            gone = self._entries.pop(pid)
            if gone.running:
                self._retired[pid] = gone
        added: list[str] = []
        changed: list[str] = []
        unchanged = 0
        now = trio.current_time() if self._epoch is not None else 0.0
        for pid, probe in wanted.items():
            entry = self._entries.get(pid)
            if entry is None:
                # A probe removed by an earlier reload whose last run is still in flight comes back as the
                # same entry, so that it cannot overlap that run.
                entry = self._retired.pop(pid, None) or _Entry(probe, phase_fraction(pid))
                entry.probe = probe
                entry.generation += 1
                self._entries[pid] = entry
                added.append(pid)
                if self._epoch is not None:
                    self._schedule(entry, after=now)
            elif entry.probe != probe:
                old = entry.probe
                entry.probe = probe
                changed.append(pid)
                if old.interval != probe.interval and self._epoch is not None:
                    entry.generation += 1
                    self._schedule(entry, after=now)
            else:
                unchanged += 1
        self._states.forget(wanted.keys())
        self._rtp_states.forget(wanted.keys())
        self._changed.set()
        return UpdateSummary(tuple(added), removed, tuple(changed), unchanged)

    # -- introspection (status page, tests) ------------------------------------------------------------

    def probes(self) -> tuple[Job, ...]:
        """The jobs currently scheduled."""
        return tuple(entry.probe for entry in self._entries.values())

    def offset(self, probe: Job) -> float:
        """Seconds into each interval (counted from unix time 0 on the wall clock) at which `probe` runs."""
        return phase_fraction(probe.id) * probe.interval

    def next_due(self, probe_id: str) -> float | None:
        """The trio time of the probe's next slot, or None if unknown or not running yet."""
        entry = self._entries.get(probe_id)
        return entry.due if entry is not None else None

    def is_running(self, probe_id: str) -> bool:
        """True while a run of this probe is in flight (including waiting for the concurrency limit)."""
        entry = self._entries.get(probe_id)
        return entry is not None and entry.running

    def skipped(self, probe_id: str) -> int:
        """Slots of this probe skipped because its previous run had not finished."""
        entry = self._entries.get(probe_id)
        return entry.skipped if entry is not None else 0

    @property
    def skipped_slots(self) -> int:
        """Slots skipped (previous run still going) since start, over all probes, removed ones included."""
        return self._skipped_total

    @property
    def dropped_results(self) -> int:
        """Runs whose results were dropped because their probe was removed or changed meanwhile."""
        return self._dropped_total

    # -- the loop --------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the timetable until cancelled; `task_status.started()` once every probe has its first slot."""
        if self._nursery is not None:
            raise RuntimeError("Scheduler.run() is already running")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            now = trio.current_time()
            self._epoch = now - self._wall_clock()
            self._heap.clear()
            self._watches.clear()
            for entry in self._entries.values():
                entry.generation += 1
                self._schedule(entry, after=now)
            log_event(
                _log,
                logging.INFO,
                "scheduler started",
                probes=len(self._entries),
                max_concurrency=self.max_concurrency,
            )
            task_status.started()
            try:
                await self._timer_loop()
            finally:
                self._nursery = None
                self._epoch = None

    async def _timer_loop(self) -> None:
        fired = 0
        while True:
            slot = self._peek()
            now = trio.current_time()
            if self._watches and self._watches[0][0] <= now:
                self._start_watchdogs(now)
            if slot is None or slot.due > now:
                fired = 0
                await self._wait_for_change(self._next_wake(slot))
                continue
            heapq.heappop(self._heap)
            self._fire(slot.entry, slot.due, now)
            fired += 1
            if fired >= _FIRE_BATCH:
                fired = 0
                await trio.lowlevel.checkpoint()

    def _peek(self) -> _Slot | None:
        """The earliest live slot, discarding stale ones (removed probes, superseded generations)."""
        while self._heap:
            slot = self._heap[0]
            entry = slot.entry
            if slot.generation == entry.generation and self._entries.get(entry.probe.id) is entry:
                return slot
            heapq.heappop(self._heap)
        return None

    async def _wait_for_change(self, until: float) -> None:
        with trio.move_on_at(until) as self._sleep:
            try:
                await self._changed.wait()
            finally:
                self._sleep = None
        if self._changed.is_set():
            self._changed = trio.Event()

    def _next_wake(self, slot: _Slot | None) -> float:
        """When the timer loop must wake: the earliest of `slot` and the deadlines of runs still in flight."""
        watches = self._watches
        while watches and watches[0][2].ended:
            heapq.heappop(watches)
        due = slot.due if slot is not None else math.inf
        return min(due, watches[0][0]) if watches else due

    def _watch(self, guard: trio.CancelScope, deadline: float) -> _Watch:
        """Arm the overrun guard of a run that starts now (see "Failures are data" above)."""
        watch = _Watch(guard, deadline)
        self._seq += 1
        heapq.heappush(self._watches, (deadline, self._seq, watch))
        sleep = self._sleep
        if sleep is not None and deadline < sleep.deadline:
            sleep.deadline = deadline  # the timer loop waits for something later: wake it for this one
        return watch

    def _unwatch(self, watch: _Watch) -> None:
        """The run ended: stop its watchdog, and a wait of the timer loop for its deadline alone."""
        watch.ended = True
        if watch.ticks is not None:
            watch.ticks.cancel()
        sleep = self._sleep
        if sleep is not None and sleep.deadline == watch.deadline:
            sleep.deadline = self._next_wake(self._peek())

    def _start_watchdogs(self, now: float) -> None:
        """Start the watchdog task of every run still in flight whose deadline has come."""
        assert self._nursery is not None
        watches = self._watches
        while watches and watches[0][0] <= now:
            _, _, watch = heapq.heappop(watches)
            if not watch.ended:
                watch.ticks = trio.CancelScope()
                self._nursery.start_soon(_overrun_watchdog, watch.guard, watch.ticks)

    def _schedule(self, entry: _Entry, *, after: float) -> None:
        """Push the first slot of `entry` strictly later than `after` on its grid."""
        assert self._epoch is not None
        interval = entry.probe.interval
        base = self._epoch + entry.fraction * interval
        k = math.floor((after - base) / interval + _SLOT_EPSILON) + 1
        entry.due = base + k * interval
        self._seq += 1
        heapq.heappush(self._heap, _Slot(entry.due, self._seq, entry, entry.generation))

    def _fire(self, entry: _Entry, due: float, now: float) -> None:
        # The next slot is planned from max(due, now): after a stall longer than an interval, the missed
        # slots are not run in a burst to catch up.
        self._schedule(entry, after=max(due, now))
        probe = entry.probe
        if entry.running:
            entry.skipped += 1
            entry.skip_streak += 1
            self._skipped_total += 1
            self._store.slot_skipped()
            if entry.skip_streak == 1:
                log_event(
                    _log,
                    logging.WARNING,
                    "probe slot skipped: previous run still in progress",
                    probe=probe.name,
                    target=probe.target,
                    interval=probe.interval,
                    timeout=probe.timeout,
                    skipped_total=entry.skipped,
                )
            return
        if entry.skip_streak:
            log_event(
                _log,
                logging.INFO,
                "probe back on schedule",
                probe=probe.name,
                target=probe.target,
                skipped=entry.skip_streak,
            )
            entry.skip_streak = 0
        entry.running = True
        assert self._nursery is not None
        self._nursery.start_soon(self._run_one, entry, probe, due, name=f"probe {probe.id}")

    def cycle_of(self, probe: RtpProbeConfig, planned: float) -> int:
        """The sweep cycle an RTP run planned for trio time `planned` (one of its slots) measures: k mod
        cycles_per_sweep for the slot in wall-clock [k x interval, (k + 1) x interval)."""
        assert self._epoch is not None, "only while run() runs"
        slot = round((planned - self._epoch) / probe.interval - phase_fraction(probe.id))
        return slot % probe.cycles_per_sweep

    async def _run_one(self, entry: _Entry, probe: Job, planned: float) -> None:
        record: Callable[[], None] | None = None
        limiter = self._limiter
        try:
            # `async with limiter`, less its schedule point when a token is free and nobody waits for one
            # (acquire_nowait queues behind waiters as acquire does): the run's task has just started, and
            # the probe function's first call is a checkpoint anyway.
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                await limiter.acquire()
            try:
                start = trio.current_time()
                self._store.observe_lag(max(0.0, start - planned))
                self._store.probe_started()
                try:
                    record = await self._call_probe(probe, start + probe.timeout, planned)
                finally:
                    self._store.probe_finished()
            finally:
                limiter.release()
        finally:
            entry.running = False
            if self._retired.get(probe.id) is entry:
                del self._retired[probe.id]
        entry.runs += 1
        if self._entries.get(probe.id) is not entry or entry.probe is not probe:
            self._dropped_total += 1
            log_event(
                _log,
                logging.DEBUG,
                "probe result dropped: probe removed or changed by a reload",
                probe=probe.name,
                target=probe.target,
            )
            return
        if record is not None:
            record()

    async def _call_probe(self, probe: Job, deadline: float, planned: float) -> Callable[[], None] | None:
        """Run the job's probe function; return how to record its result (None: nothing to record)."""
        error: str
        bug: BaseException | None = None
        try:
            with trio.CancelScope() as guard:
                watch = self._watch(guard, deadline)
                try:
                    if isinstance(probe, RtpProbeConfig):
                        cycle = self.cycle_of(probe, planned)
                        rtp = await self._rtp_fn(
                            probe.spec, deadline=deadline, cycle=cycle, contexts=self._contexts
                        )
                        return partial(self._record_rtp, probe, rtp)
                    results = await self._probe_fn(probe.spec, deadline=deadline, contexts=self._contexts)
                    return partial(self._record_sip, probe, results)
                finally:
                    self._unwatch(watch)
            error = f"probe function overran its deadline by more than {OVERRUN_GRACE:g}s and was cancelled"
        except TLSConfigError as exc:
            error = str(exc)
        except Exception as exc:  # a bug in a probe must not stop the other probes
            error = f"{type(exc).__name__}: {exc}"
            bug = exc
        if self._entries.get(probe.id) is None:
            return None
        if isinstance(probe, RtpProbeConfig):
            self._rtp_states.observe_error(probe, error, exc_info=bug)
        else:
            self._states.observe_error(probe, error, exc_info=bug)
        return None

    def _record_sip(self, probe: ProbeConfig, results: Sequence[ProbeResult]) -> None:
        changes = self._store.record(probe, results)
        self._states.observe(probe, results)
        if changes:
            self._states.threshold_changes(probe, changes)

    def _record_rtp(self, probe: RtpProbeConfig, result: RtpResult) -> None:
        self._store.record_rtp(probe, result)
        self._rtp_states.observe(probe, result)


async def _overrun_watchdog(guard: trio.CancelScope, watchdog: trio.CancelScope) -> None:
    """Started at the run's deadline: cancel `guard` once the run has had `OVERRUN_GRACE` seconds of a
    responsive loop since (see the module docstring: a late tick counts as at most two ticks, so the loop's
    own lateness is never taken for the run's overrun). Cancelling `watchdog` (the run ended) ends it."""
    with watchdog:
        counted = 0.0
        while counted < OVERRUN_GRACE:
            before = trio.current_time()
            await trio.sleep(_WATCHDOG_TICK)
            counted += min(trio.current_time() - before, 2 * _WATCHDOG_TICK)
        guard.cancel()


class _RtpStateLog:
    """The RTP twin of `ProbeStateLog`: an RTP peer's first result and every change of its run's reason
    (`ok` -> `control_connect_failed` and back), once each; a run that could not run, once per text."""

    def __init__(self) -> None:
        self._logger = logging.getLogger(f"{LOGGER_NAME}.probe")
        self._reasons: dict[str, str] = {}
        self._errors: dict[str, str] = {}

    def observe(self, probe: RtpProbeConfig, result: RtpResult) -> None:
        self._errors.pop(probe.id, None)
        before = self._reasons.get(probe.id)
        reason = result.reason.value
        self._reasons[probe.id] = reason
        if before == reason:
            return
        log_event(
            self._logger,
            logging.INFO if result.success else logging.WARNING,
            "rtp peer first result" if before is None else "rtp peer state changed",
            peer=probe.name,
            target=probe.target,
            state="up" if result.success else "down",
            previous=None if before is None else ("up" if before == "ok" else "down"),
            reason=reason,
            previous_reason=None if before is None or before == reason else before,
            cycle=result.cycle,
            detail=result.detail,
        )

    def observe_error(self, probe: RtpProbeConfig, error: str, *, exc_info: BaseException | None) -> None:
        if self._errors.get(probe.id) == error:
            return
        self._errors[probe.id] = error
        log_event(
            self._logger,
            logging.ERROR,
            "rtp peer could not run",
            peer=probe.name,
            target=probe.target,
            error=error,
            exc_info=exc_info,
        )

    def forget(self, keep: Collection[str]) -> None:
        for table in (self._reasons, self._errors):
            for probe_id in [p for p in table if p not in keep]:
                del table[probe_id]
