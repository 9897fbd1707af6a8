"""The scheduler on trio's virtual clock: spread, no overlap, lag, deadlines, the concurrency bound, reload.

Every test runs with `autojump_clock` (`MockClock(autojump_threshold=0)`): time jumps to the next timer as
soon as every task is blocked, so an hour of schedule takes milliseconds and every time is exact. Probes
are fakes that sleep and return results; the store is a fake that records what it is told (and one test
uses the real `ResultStore`). RTP jobs (`[[rtp]]`) run through a fake `probe_rtp` that records the cycle
it was asked for.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pytest
import trio
import trio.testing

from tests.test_metrics import rtp_config, rtp_result
from umprobe.config import ProbeConfig, RtpProbeConfig
from umprobe.net.errors import TLSConfigError
from umprobe.probes.result import Phase, ProbeResult, Reason, Timings
from umprobe.probes.rtp import RtpProbeSpec
from umprobe.probes.rtp_result import RtpReason, RtpResult
from umprobe.probes.sip_options import SipProbeSpec, TLSContextCache
from umprobe.scheduler import OVERRUN_GRACE, Scheduler, phase_fraction
from umprobe.store import ResultStore


def make_probe(
    probe_id: str, *, interval: float = 60.0, timeout: float = 5.0, port: int = 5060
) -> ProbeConfig:
    """A probe whose spec host is its id, so a fake probe function can tell probes apart."""
    return ProbeConfig(
        id=probe_id,
        name=f"{probe_id}:{port}/tcp",
        target=probe_id,
        module="tcp",
        spec=SipProbeSpec(host=probe_id, port=port),
        interval=interval,
        timeout=timeout,
        labels=(),
        required=True,
        group=None,
    )


def make_result(spec: SipProbeSpec, *, success: bool = True, address: str = "192.0.2.1") -> ProbeResult:
    return ProbeResult(
        target=spec.host,
        address=address,
        family="ipv4",
        port=spec.port,
        transport=spec.transport,
        listener=spec.listener,
        success=success,
        alive=success,
        reason=Reason.OK if success else Reason.CONNECT_REFUSED,
        phase=None if success else Phase.CONNECT,
        detail="200 OK" if success else "connection refused",
        timings=Timings(resolve=0.0, connect=0.001, sip=0.002 if success else None, total=0.003),
        status_code=200 if success else None,
    )


@dataclass
class Call:
    host: str
    start: float
    deadline: float
    end: float | None = None


@dataclass
class FakeProbe:
    """Sleeps `duration(spec)` (ignoring the deadline unless told to honour it) and returns one result."""

    duration: Callable[[SipProbeSpec], float] = lambda _spec: 0.0
    success: Callable[[SipProbeSpec, int], bool] = lambda _spec, _n: True
    honour_deadline: bool = True
    calls: list[Call] = field(default_factory=list)
    calls_per_host: Counter[str] = field(default_factory=Counter)
    active: Counter[str] = field(default_factory=Counter)
    max_active_per_host: Counter[str] = field(default_factory=Counter)
    active_total: int = 0
    max_active_total: int = 0
    contexts_seen: list[TLSContextCache | None] = field(default_factory=list)

    async def __call__(
        self, spec: SipProbeSpec, *, deadline: float, contexts: TLSContextCache | None = None
    ) -> list[ProbeResult]:
        call = Call(spec.host, trio.current_time(), deadline)
        n = self.calls_per_host[spec.host]
        self.calls_per_host[spec.host] += 1
        self.calls.append(call)
        self.contexts_seen.append(contexts)
        self.active[spec.host] += 1
        self.active_total += 1
        self.max_active_per_host[spec.host] = max(self.max_active_per_host[spec.host], self.active[spec.host])
        self.max_active_total = max(self.max_active_total, self.active_total)
        try:
            if self.honour_deadline:
                with trio.move_on_at(deadline):
                    await trio.sleep(self.duration(spec))
            else:
                await trio.sleep(self.duration(spec))
        finally:
            self.active[spec.host] -= 1
            self.active_total -= 1
            call.end = trio.current_time()
        return [make_result(spec, success=self.success(spec, n))]

    def starts(self, host: str) -> list[float]:
        return [c.start for c in self.calls if c.host == host]


@dataclass
class RtpCall:
    host: str
    cycle: int
    start: float
    deadline: float
    contexts: TLSContextCache | None


@dataclass
class FakeRtp:
    """A fake `probe_rtp`: records the cycle it was asked for, sleeps `duration`, returns a fabricated run."""

    duration: float = 0.5
    reason: Callable[[int], RtpReason] = lambda _n: RtpReason.OK
    honour_deadline: bool = True
    calls: list[RtpCall] = field(default_factory=list)
    called: trio.Event = field(default_factory=trio.Event)
    active: int = 0
    max_active: int = 0

    async def __call__(
        self, spec: RtpProbeSpec, *, deadline: float, cycle: int, contexts: TLSContextCache | None = None
    ) -> RtpResult:
        n = len(self.calls)
        self.calls.append(RtpCall(spec.host, cycle, trio.current_time(), deadline, contexts))
        self.called.set()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            with trio.move_on_at(deadline if self.honour_deadline else math.inf):
                await trio.sleep(self.duration)
        finally:
            self.active -= 1
        return rtp_result(spec, cycle=cycle, reason=self.reason(n))


@dataclass
class FakeStore:
    records: list[tuple[ProbeConfig, tuple[ProbeResult, ...]]] = field(default_factory=list)
    rtp_records: list[tuple[RtpProbeConfig, RtpResult]] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    skipped: int = 0

    def record(self, probe: ProbeConfig, results: Sequence[ProbeResult]) -> None:
        self.records.append((probe, tuple(results)))

    def record_rtp(self, probe: RtpProbeConfig, result: RtpResult) -> None:
        self.rtp_records.append((probe, result))

    def observe_lag(self, seconds: float) -> None:
        self.lags.append(seconds)

    def probe_started(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def probe_finished(self) -> None:
        self.in_flight -= 1

    def slot_skipped(self) -> None:
        self.skipped += 1

    def recorded_ids(self) -> list[str]:
        return [p.id for p, _ in self.records]


async def run_for(scheduler: Scheduler, seconds: float, during: Callable[[], None] | None = None) -> None:
    """Run the scheduler for `seconds` of (virtual) time, then cancel it."""
    with trio.fail_after(seconds + 10):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()


def wall_zero() -> float:
    return 0.0


def fields(record: logging.LogRecord) -> dict[str, object]:
    """The structured fields `umprobe.logs.log_event` put on a record."""
    value = record.__dict__.get("umprobe_fields", {})
    assert isinstance(value, dict)
    return value


# -- phases --------------------------------------------------------------------------------------------


def test_phase_fraction_is_a_stable_function_of_the_id() -> None:
    # A fixed value (the first 8 bytes of sha256 of the id): changing the hash would move every probe's
    # slot on upgrade, so this number must not change.
    assert phase_fraction("cas01.contoso.local|call_router|tls|5061|mtls") == 0x348CBF076D7AE912 / 2**64
    values = [phase_fraction(f"probe-{i}") for i in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert values == [phase_fraction(f"probe-{i}") for i in range(1000)]
    assert len(set(values)) == 1000


async def test_probes_with_one_interval_are_spread_evenly(autojump_clock: trio.testing.MockClock) -> None:
    n, interval = 1000, 60.0
    fake = FakeProbe()
    sched = Scheduler(FakeStore(), max_concurrency=n, probe_fn=fake, wall_clock=wall_zero)
    sched.update([make_probe(f"p{i:04d}", interval=interval) for i in range(n)])
    await run_for(sched, interval - 1e-3)

    starts = sorted(c.start for c in fake.calls)
    assert len(starts) == n, "every probe runs exactly once in its first interval"
    assert len({c.host for c in fake.calls}) == n
    assert len(set(starts)) == n, "distinct phases"
    # Nothing at start-up: the earliest run waits for its slot; and no herd anywhere.
    assert starts[0] > 0.0
    per_second = Counter(math.floor(s) for s in starts)
    assert max(per_second.values()) <= 3 * n / interval
    # Hashing spreads like a fair die, not like a comb: a chi-square test over 10 buckets must not reject
    # uniformity at p = 0.001 (critical value 27.88 for 9 degrees of freedom).
    per_tenth = Counter(math.floor(s / (interval / 10)) for s in starts)
    chi2 = sum((per_tenth[b] - n / 10) ** 2 / (n / 10) for b in range(10))
    assert chi2 < 27.88, per_tenth
    # The slot is the id's fraction of the interval (the grid is anchored at wall-clock 0 here).
    for call in fake.calls:
        assert call.start == pytest.approx(phase_fraction(call.host) * interval)


async def test_slots_are_stable_across_restarts(autojump_clock: trio.testing.MockClock) -> None:
    """Two daemons started at different wall-clock times run each probe at the same second of its interval."""
    probes = [make_probe(f"p{i}", interval=30.0) for i in range(50)] + [
        make_probe(f"q{i}", interval=7.0) for i in range(20)
    ]
    seen: list[dict[str, set[float]]] = []
    for wall_start in (1_700_000_000.25, 1_700_000_913.9):
        fake = FakeProbe()
        t0 = trio.current_time()

        def wall_clock(w: float = wall_start, t0: float = t0) -> float:
            return w + (trio.current_time() - t0)

        sched = Scheduler(FakeStore(), max_concurrency=100, probe_fn=fake, wall_clock=wall_clock)
        sched.update(probes)
        await run_for(sched, 60.0)
        by_probe: dict[str, set[float]] = {}
        for call in fake.calls:
            wall = wall_start + (call.start - t0)
            interval = 30.0 if call.host.startswith("p") else 7.0
            by_probe.setdefault(call.host, set()).add(round(wall % interval, 4))
        seen.append(by_probe)
    assert seen[0].keys() == {p.id for p in probes}
    for host, offsets in seen[0].items():
        assert len(offsets) == 1, f"{host} drifted: {offsets}"
        assert offsets == seen[1][host]


# -- one run -------------------------------------------------------------------------------------------


async def test_deadline_is_start_plus_timeout_and_contexts_are_shared(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeProbe()
    contexts = TLSContextCache()
    sched = Scheduler(FakeStore(), max_concurrency=4, probe_fn=fake, contexts=contexts, wall_clock=wall_zero)
    sched.update([make_probe("a", interval=10.0, timeout=2.5), make_probe("b", interval=20.0, timeout=7.0)])
    await run_for(sched, 60.0)
    assert Counter(c.host for c in fake.calls) == {"a": 6, "b": 3}
    for call in fake.calls:
        timeout = 2.5 if call.host == "a" else 7.0
        assert call.deadline == pytest.approx(call.start + timeout)
    assert all(c is contexts for c in fake.contexts_seen)
    assert sched.contexts is contexts


async def test_results_lag_and_in_flight_reach_the_store(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeProbe(duration=lambda _s: 0.5)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=4, probe_fn=fake, wall_clock=wall_zero)
    probe = make_probe("a", interval=10.0)
    sched.update([probe])
    await run_for(sched, 35.0)
    assert store.recorded_ids() == ["a", "a", "a"]
    assert store.records[0][0] is probe
    assert store.records[0][1][0].success
    assert store.lags == [0.0, 0.0, 0.0], "an idle scheduler starts each run exactly on its slot"
    assert store.in_flight == 0
    assert store.max_in_flight == 1


async def test_lag_includes_waiting_for_the_concurrency_limit(autojump_clock: trio.testing.MockClock) -> None:
    # Two probes whose slots are 0.5 s .. 4 s apart; with one token the second waits for the first.
    interval, busy = 60.0, 5.0
    ids = [f"lag{i}" for i in range(500)]
    offsets = {i: phase_fraction(i) * interval for i in ids}
    first, second = next(
        (a, b)
        for a in ids
        for b in ids
        if a != b and 0.5 < offsets[b] - offsets[a] < busy - 1 and 1 < offsets[a] < 45
    )
    fake = FakeProbe(duration=lambda _s: busy)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=1, probe_fn=fake, wall_clock=wall_zero)
    sched.update([make_probe(first, interval=interval, timeout=10.0), make_probe(second, interval=interval)])
    await run_for(sched, interval - 1)
    assert [c.host for c in fake.calls] == [first, second]
    expected_lag = offsets[first] + busy - offsets[second]
    assert store.lags == [pytest.approx(0.0), pytest.approx(expected_lag)]
    # The deadline counts from the actual start, not the planned slot: waiting in line eats no timeout.
    late = fake.calls[1]
    assert late.start == pytest.approx(offsets[first] + busy)
    assert late.deadline == pytest.approx(late.start + 5.0)


async def test_a_probe_never_overlaps_itself(autojump_clock: trio.testing.MockClock) -> None:
    # 25 s runs every 10 s: run, skip, skip, run, ... (the config forbids timeout >= interval, but a slow
    # run can still meet its next slot while it waits for the concurrency limit).
    fake = FakeProbe(duration=lambda _s: 25.0)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=4, probe_fn=fake, wall_clock=wall_zero)
    probe = make_probe("slow", interval=10.0, timeout=30.0)
    sched.update([probe])
    offset = phase_fraction("slow") * 10.0
    await run_for(sched, 95.0)
    assert fake.max_active_per_host["slow"] == 1
    slots = [offset + 10.0 * k for k in range(10) if offset + 10.0 * k < 95.0]
    # Each run covers 25 s: it starts on slot 0, 3, 6, 9; the two slots in between are skipped.
    assert fake.starts("slow") == pytest.approx(slots[::3])
    assert sched.skipped("slow") == len(slots) - len(slots[::3])
    assert sched.skipped_slots == sched.skipped("slow") == store.skipped
    assert store.lags == [0.0] * len(store.lags), "a skipped slot is not queued, so no run starts late"


async def test_skipped_slots_are_logged_once_per_streak(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeProbe(duration=lambda _s: 35.0, honour_deadline=False)
    sched = Scheduler(FakeStore(), max_concurrency=1, probe_fn=fake, wall_clock=wall_zero)
    sched.update([make_probe("slow", interval=10.0, timeout=40.0)])
    with caplog.at_level(logging.INFO, logger="umprobe"):
        await run_for(sched, 50.0)
    skipped = [r for r in caplog.records if "slot skipped" in r.getMessage()]
    assert sched.skipped("slow") == 3
    assert len(skipped) == 1
    assert any("back on schedule" in r.getMessage() for r in caplog.records)


async def test_concurrency_bound_is_respected(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeProbe(duration=lambda _s: 3.0)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=5, probe_fn=fake, wall_clock=wall_zero)
    sched.update([make_probe(f"c{i}", interval=10.0, timeout=5.0) for i in range(60)])
    await run_for(sched, 60.0)
    assert fake.max_active_total == 5
    assert store.max_in_flight == 5
    assert max(fake.max_active_per_host.values()) == 1
    # 60 probes x 3 s through 5 lanes = 36 s of work per 10 s interval: most slots are shed, none queued.
    assert sched.skipped_slots > 0
    assert len(fake.calls) <= 60 / 3 * 5 + 5


async def test_max_concurrency_can_change_while_running(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeProbe(duration=lambda _s: 3.0)
    sched = Scheduler(FakeStore(), max_concurrency=2, probe_fn=fake, wall_clock=wall_zero)
    sched.update([make_probe(f"c{i}", interval=10.0, timeout=5.0) for i in range(40)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(30)
        assert fake.max_active_total == 2
        sched.max_concurrency = 7
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert fake.max_active_total == 7
    with pytest.raises(ValueError):
        sched.max_concurrency = 0
    with pytest.raises(ValueError):
        Scheduler(FakeStore(), max_concurrency=0)


# -- reload --------------------------------------------------------------------------------------------


async def test_update_keeps_unchanged_phases_and_stops_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeProbe(duration=lambda _s: 0.1)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=10, probe_fn=fake, wall_clock=wall_zero)
    a, b, c = (make_probe(x, interval=10.0, timeout=2.0) for x in ("keep", "change", "remove"))
    sched.update([a, b, c])
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(25.0)
        due_before = sched.next_due("keep")
        b2 = replace(b, timeout=4.0)
        d = make_probe("add", interval=10.0, timeout=2.0)
        summary = sched.update([a, b2, d])
        reload_at = trio.current_time()
        assert summary.added == ("add",)
        assert summary.removed == ("remove",)
        assert summary.changed == ("change",)
        assert summary.unchanged == 1
        assert sched.next_due("keep") == due_before
        assert sched.next_due("remove") is None
        assert {p.id for p in sched.probes()} == {"keep", "change", "add"}
        await trio.sleep(40.0)
        end = trio.current_time()
        nursery.cancel_scope.cancel()

    def grid(host: str) -> set[float]:
        return {round((s - phase_fraction(host) * 10.0) % 10.0, 6) % 10.0 for s in fake.starts(host)}

    # Unchanged and changed probes stay on their grids; the added one starts on its own, not "now".
    for host in ("keep", "change", "add"):
        assert grid(host) == {0.0}, host
    assert all(s < reload_at for s in fake.starts("remove"))
    assert len(fake.starts("remove")) in (2, 3)
    assert min(fake.starts("add")) > reload_at
    # The changed probe runs with its new timeout from its next slot on.
    for call in fake.calls:
        if call.host == "change":
            expected = 4.0 if call.start > reload_at else 2.0
            assert call.deadline - call.start == pytest.approx(expected)
    recorded = Counter(store.recorded_ids())
    for host in ("keep", "add"):
        assert recorded[host] == len([s for s in fake.starts(host) if s + 0.1 <= end])
    assert recorded["add"] >= 3


async def test_interval_change_moves_the_probe_to_its_new_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeProbe()
    sched = Scheduler(FakeStore(), max_concurrency=10, probe_fn=fake, wall_clock=wall_zero)
    probe = make_probe("p", interval=3600.0, timeout=5.0)
    sched.update([probe])
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(1.0)
        sched.update([replace(probe, interval=10.0)])
        due = sched.next_due("p")
        assert due is not None and 1.0 < due <= 11.0
        await trio.sleep(50.0)
        nursery.cancel_scope.cancel()
    starts = fake.starts("p")
    assert len(starts) == 5
    assert starts == pytest.approx([phase_fraction("p") * 10.0 + 10.0 * k for k in range(1, 6)])


async def test_results_of_a_removed_or_changed_probe_in_flight_are_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Each run takes 9 of every 10 seconds, so at the latest slot + 0.5 s both are in flight.
    fake = FakeProbe(duration=lambda _s: 9.0)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=10, probe_fn=fake, wall_clock=wall_zero)
    gone = make_probe("gone", interval=10.0, timeout=9.5)
    changed = make_probe("changed", interval=10.0, timeout=9.5)
    sched.update([gone, changed])
    latest_slot = max(phase_fraction("gone"), phase_fraction("changed")) * 10.0
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.run)
            await trio.sleep(latest_slot + 0.5)
            assert fake.active_total == 2
            sched.update([replace(changed, timeout=3.0)])
            assert not sched.is_running("gone")
            assert sched.is_running("changed")
            await trio.sleep(9.0)
            assert fake.active_total == 0, "the in-flight runs were allowed to finish"
            nursery.cancel_scope.cancel()
    assert store.records == []
    assert sched.dropped_results == 2
    assert store.in_flight == 0


async def test_a_probe_removed_and_re_added_mid_run_does_not_overlap_that_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeProbe(duration=lambda _s: 25.0)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=10, probe_fn=fake, wall_clock=wall_zero)
    probe = make_probe("back", interval=10.0, timeout=30.0)
    sched.update([probe])
    first_slot = phase_fraction("back") * 10.0
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.run)
            await trio.sleep(first_slot + 1.0)
            sched.update([])
            await trio.sleep(1.0)
            sched.update([replace(probe)])  # equal, but a new value from a new load
            await trio.sleep(60.0)
            nursery.cancel_scope.cancel()
    assert fake.max_active_per_host["back"] == 1
    starts = fake.starts("back")
    assert starts[0] == pytest.approx(first_slot)
    assert starts[1] >= starts[0] + 25.0, "the re-added probe waited for the old run to end"
    assert 1 <= len(store.records) <= len(starts) - 1
    assert sched.dropped_results == 1, "the run from before the removal was not recorded"


async def test_update_rejects_duplicate_ids() -> None:
    sched = Scheduler(FakeStore(), max_concurrency=1)
    with pytest.raises(ValueError, match="duplicate"):
        sched.update([make_probe("x"), make_probe("x", port=5061)])


async def test_run_twice_at_once_is_an_error(autojump_clock: trio.testing.MockClock) -> None:
    sched = Scheduler(FakeStore(), max_concurrency=1, probe_fn=FakeProbe())
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        with pytest.raises(RuntimeError):
            await sched.run()
        nursery.cancel_scope.cancel()


async def test_empty_scheduler_waits_for_probes(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeProbe()
    sched = Scheduler(FakeStore(), max_concurrency=1, probe_fn=fake, wall_clock=wall_zero)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(100.0)
        sched.update([make_probe("late", interval=10.0)])
        await trio.sleep(20.0)
        nursery.cancel_scope.cancel()
    assert len(fake.starts("late")) == 2
    assert min(fake.starts("late")) > 100.0


# -- failures that are not data ------------------------------------------------------------------------


async def test_a_raising_probe_is_logged_once_and_others_keep_running(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    ok = FakeProbe()

    async def probe_fn(
        spec: SipProbeSpec, *, deadline: float, contexts: TLSContextCache | None = None
    ) -> list[ProbeResult]:
        if spec.host == "badtls":
            raise TLSConfigError("/etc/umprobe/probe.pem: no such file")
        if spec.host == "bug":
            raise ZeroDivisionError("oops")
        return await ok(spec, deadline=deadline, contexts=contexts)

    store = FakeStore()
    sched = Scheduler(store, max_concurrency=4, probe_fn=probe_fn, wall_clock=wall_zero)
    sched.update([make_probe(x, interval=10.0) for x in ("badtls", "bug", "fine")])
    with caplog.at_level(logging.INFO, logger="umprobe"):
        await run_for(sched, 50.0)
    assert Counter(store.recorded_ids()) == {"fine": 5}
    errors = [r for r in caplog.records if r.getMessage() == "probe could not run"]
    assert len(errors) == 2
    assert {fields(r)["probe"] for r in errors} == {"badtls:5060/tcp", "bug:5060/tcp"}
    bug = next(r for r in errors if fields(r)["probe"] == "bug:5060/tcp")
    assert bug.exc_info is not None and bug.exc_info[0] is ZeroDivisionError
    assert store.in_flight == 0


async def test_a_probe_that_ignores_its_deadline_is_cut_off(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeProbe(duration=lambda _s: 1000.0, honour_deadline=False)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=1, probe_fn=fake, wall_clock=wall_zero)
    sched.update([make_probe("stuck", interval=10.0, timeout=2.0)])
    with caplog.at_level(logging.INFO, logger="umprobe"):
        await run_for(sched, 25.0)
    for call in fake.calls:
        assert call.end is not None
        assert call.end == pytest.approx(call.start + 2.0 + OVERRUN_GRACE)
    assert store.records == []
    assert sum("overran" in str(fields(r).get("error")) for r in caplog.records) == 1


async def test_probes_with_other_timeouts_are_each_cut_off_at_their_own_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The watchdogs wait in the timer loop's heap: a short deadline armed while the loop waits for a later
    # slot or deadline must still be kept, whichever of the two probes starts first.
    fake = FakeProbe(duration=lambda _s: 1000.0, honour_deadline=False)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=4, probe_fn=fake, wall_clock=wall_zero)
    sched.update(
        [make_probe("long", interval=100.0, timeout=50.0), make_probe("short", interval=100.0, timeout=2.0)]
    )
    await run_for(sched, 250.0)
    cut = [c for c in fake.calls if c.end is not None and c.end < 250.0]
    assert Counter(c.host for c in cut) == {"long": 2, "short": 2}
    for call in cut:
        assert call.end is not None
        limit = call.start + (50.0 if call.host == "long" else 2.0) + OVERRUN_GRACE
        # The grace is 20 ticks of 0.05 s; their float sum may fall short of 1.0 by a rounding: one tick more.
        assert limit - 1e-9 <= call.end <= limit + 0.05 + 1e-9
    assert store.records == []
    assert store.in_flight == 0


class _Steps(trio.abc.Instrument):
    """Every task spawned, and when the scheduler's own task (its timer loop) ran."""

    def __init__(self) -> None:
        self.spawned: list[str] = []
        self.loop_steps: list[float] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned.append(task.name)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Scheduler.run"):
            self.loop_steps.append(trio.current_time())


async def test_runs_that_end_in_time_start_no_watchdog_and_never_wake_the_loop_at_their_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeProbe(duration=lambda _s: 0.1)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=1, probe_fn=fake, wall_clock=wall_zero)
    sched.update([make_probe("sparse", interval=60.0, timeout=5.0)])
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        await run_for(sched, 200.0)
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert len(fake.calls) == 3
    assert [name for name in steps.spawned if "watchdog" in name] == []
    assert any(name.endswith("Scheduler.run") for name in steps.spawned)
    deadlines = {call.deadline for call in fake.calls}
    assert not deadlines & set(steps.loop_steps), "the timer loop woke at a finished run's deadline"
    assert len(store.records) == 3


# -- state-change logging --------------------------------------------------------------------------------


async def test_state_changes_are_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # up, up, down, down, down, up, up
    pattern = [True, True, False, False, False, True, True]
    fake = FakeProbe(success=lambda _spec, n: pattern[n] if n < len(pattern) else True)
    sched = Scheduler(FakeStore(), max_concurrency=1, probe_fn=fake, wall_clock=wall_zero)
    sched.update([make_probe("flappy", interval=10.0)])
    with caplog.at_level(logging.INFO, logger="umprobe"):
        await run_for(sched, 69.0)
    assert len(fake.calls) == 7
    lines = [
        (r.getMessage(), fields(r))
        for r in caplog.records
        if r.getMessage() in ("probe first result", "probe state changed")
    ]
    assert [(m, f["state"], f.get("previous")) for m, f in lines] == [
        ("probe first result", "up", None),
        ("probe state changed", "down", "up"),
        ("probe state changed", "up", "down"),
    ]
    down = lines[1][1]
    assert down["probe"] == "flappy:5060/tcp"
    assert down["target"] == "flappy"
    assert down["address"] == "192.0.2.1"
    assert down["reason"] == "connect_refused"


# -- with the real store -----------------------------------------------------------------------------------


async def test_with_the_real_result_store(autojump_clock: trio.testing.MockClock) -> None:
    store = ResultStore()
    probes = [make_probe("r1", interval=10.0), make_probe("r2", interval=10.0)]
    store.set_probes(probes)
    fake = FakeProbe(duration=lambda _s: 0.2)
    sched = Scheduler(store, max_concurrency=2, probe_fn=fake, wall_clock=wall_zero)
    sched.update(probes)
    await run_for(sched, 30.0)
    assert store.in_flight == 0
    for probe in probes:
        (result,) = store.latest(probe.id)
        assert result.success and result.target == probe.id
    assert store.scheduler_lag().count == len(fake.calls) == 6


# -- RTP jobs ----------------------------------------------------------------------------------------------


def wall_from(start: float) -> Callable[[], float]:
    """A wall clock that reads `start` now and runs with trio's (virtual) clock."""
    t0 = trio.current_time()
    return lambda: start + (trio.current_time() - t0)


async def test_rtp_jobs_are_scheduled_like_probes_and_walk_the_sweep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rtp = rtp_config(interval=10.0, timeout=8.0)  # 8 cycles per sweep
    assert rtp.cycles_per_sweep == 8
    sip = make_probe("sip", interval=10.0)
    fake, sip_fake, store, contexts = FakeRtp(), FakeProbe(), FakeStore(), TLSContextCache()
    wall_start = 1_800_000_003.0
    sched = Scheduler(
        store,
        max_concurrency=4,
        probe_fn=sip_fake,
        rtp_fn=fake,
        contexts=contexts,
        wall_clock=wall_from(wall_start),
    )
    t0 = trio.current_time()
    sched.update([sip, rtp])
    await run_for(sched, 200.0)
    assert len(fake.calls) == len(sip_fake.calls) == 20
    fraction = phase_fraction(rtp.id)
    first = math.floor(wall_start / 10.0 - fraction) + 1  # the first slot after start, on the wall grid
    for n, call in enumerate(fake.calls):
        wall = wall_start + (call.start - t0)
        assert wall == pytest.approx((first + n + fraction) * 10.0), "the hash-spread grid, as for SIP"
        assert call.cycle == (first + n) % 8 == math.floor(wall / 10.0) % 8
        assert call.deadline == pytest.approx(call.start + 8.0)
        assert call.contexts is contexts and call.host == "mbx01.contoso.local"
    cycles = [c.cycle for c in fake.calls]
    assert all((b - a) % 8 == 1 for a, b in itertools.pairwise(cycles)), "consecutive cycles"
    assert sorted(set(cycles)) == list(range(8)), "20 runs cover the whole sweep"
    recorded = [r.cycle for _, r in store.rtp_records]
    assert len(recorded) >= 19 and recorded == cycles[: len(recorded)]  # the last run may be in flight
    assert all(p is rtp for p, _ in store.rtp_records)
    assert set(store.recorded_ids()) == {"sip"}


async def test_a_restart_continues_the_sweep(autojump_clock: trio.testing.MockClock) -> None:
    rtp = rtp_config(interval=60.0, timeout=30.0)
    seen: list[list[int]] = []
    for wall_start in (1_800_000_000.0, 1_800_000_000.0 + 3 * 60.0):  # stopped, started 3 minutes later
        fake = FakeRtp()
        sched = Scheduler(FakeStore(), max_concurrency=1, rtp_fn=fake, wall_clock=wall_from(wall_start))
        sched.update([rtp])
        await run_for(sched, 3 * 60.0)
        seen.append([c.cycle for c in fake.calls])
    assert len(seen[0]) == len(seen[1]) == 3
    assert seen[1][0] == (seen[0][-1] + 1) % 8, "the second daemon picks up where the first stopped"


async def test_an_rtp_job_never_overlaps_itself_and_a_skipped_slot_skips_its_cycle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # timeout 9.5 s + the 1 s overrun grace > the 10 s interval: a run that ignores its deadline still
    # holds the next slot, which is skipped, and so is that slot's cycle (left for the next sweep)
    rtp = rtp_config(interval=10.0, timeout=9.5)
    fake = FakeRtp(duration=25.0, honour_deadline=False)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=4, rtp_fn=fake, wall_clock=wall_zero)
    sched.update([rtp])
    await run_for(sched, 100.0)
    assert fake.max_active == 1
    assert len(fake.calls) == 5 and store.skipped == 5
    for a, b in itertools.pairwise(fake.calls):
        assert b.start - a.start == pytest.approx(20.0)
        assert (b.cycle - a.cycle) % 8 == 2
    assert store.rtp_records == [], "every run overran its deadline and was cancelled"


async def test_rtp_results_reach_the_real_store_and_reloads_drop_in_flight_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rtp = rtp_config(interval=10.0, timeout=8.0)
    store = ResultStore()
    store.set_rtp([rtp])
    fake = FakeRtp(duration=2.0)
    sched = Scheduler(store, max_concurrency=2, rtp_fn=fake, wall_clock=wall_zero)
    sched.update([rtp])
    await run_for(sched, 30.0)
    latest = store.rtp_latest(rtp.id)
    assert latest is not None and latest.success and latest.cycle == fake.calls[-1].cycle
    stats = store.rtp_stats(rtp.id)
    assert stats is not None and stats.runs == len(fake.calls) == 3
    assert store.in_flight == 0

    # a reload that removes the job while a run is in flight: its result is dropped
    fake2 = FakeRtp(duration=5.0)
    sched2 = Scheduler(FakeStore(), max_concurrency=1, rtp_fn=fake2, wall_clock=wall_zero)
    sched2.update([rtp])
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(sched2.run)
            await fake2.called.wait()
            sched2.update([])
            await trio.sleep(10.0)
            nursery.cancel_scope.cancel()
    assert sched2.dropped_results == 1


async def test_rtp_state_changes_and_errors_are_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    pattern = [RtpReason.OK, RtpReason.OK, RtpReason.CONTROL_AUTH_FAILED, RtpReason.CONTROL_AUTH_FAILED]
    fake = FakeRtp(reason=lambda n: pattern[n] if n < len(pattern) else RtpReason.OK)
    rtp = rtp_config(interval=10.0, timeout=8.0)

    async def broken(
        spec: RtpProbeSpec, *, deadline: float, cycle: int, contexts: TLSContextCache | None = None
    ) -> RtpResult:
        if spec.host == "bad.contoso.local":
            raise TLSConfigError("/etc/umprobe/peer-ca.pem: no such file")
        return await fake(spec, deadline=deadline, cycle=cycle, contexts=contexts)

    bad = rtp_config(name="bad", host="bad.contoso.local", interval=10.0, timeout=8.0)
    store = FakeStore()
    sched = Scheduler(store, max_concurrency=2, rtp_fn=broken, wall_clock=wall_zero)
    sched.update([rtp, bad])
    with caplog.at_level(logging.INFO, logger="umprobe"):
        await run_for(sched, 59.0)
    lines = [
        (r.getMessage(), fields(r))
        for r in caplog.records
        if r.getMessage() in ("rtp peer first result", "rtp peer state changed")
    ]
    assert [(m, f["state"], f["reason"]) for m, f in lines] == [
        ("rtp peer first result", "up", "ok"),
        ("rtp peer state changed", "down", "control_auth_failed"),
        ("rtp peer state changed", "up", "ok"),
    ]
    assert lines[1][1]["peer"] == "mbx01" and lines[1][1]["previous"] == "up"
    errors = [r for r in caplog.records if r.getMessage() == "rtp peer could not run"]
    assert len(errors) == 1 and fields(errors[0])["peer"] == "bad"
    assert {p.name for p, _ in store.rtp_records} == {"mbx01"}
