"""Up/down judgement of a listener by thresholds, the way an SBC decides whether a peer is in service.

A probe run says whether one OPTIONS exchange worked (`umprobe_probe_success`, raw). An SBC does not take a
peer out of service on one lost OPTIONS, nor back on one answer: it counts consecutive failures and
successes against thresholds. `UpDown` does the same, so umprobe's view agrees with the SBC's
(docs/thresholds.md).

Theory of operation
-------------------
Pure state: no I/O, no clock. `UpDown.feed(success)` is called once per result of one listener address, in
run order, and returns the transition it caused ("up", "down") or None.

* The state starts "unknown": nothing has been judged yet. It becomes "down" after `failures_before_down`
  consecutive failures, "up" after `successes_before_up` consecutive successes (whichever run of results
  completes first), and from then on moves between "up" and "down" only by the same rule.
* A success resets the failure run and a failure resets the success run, so a listener that flaps (fail,
  ok, fail, ok, ...) with thresholds above 1 keeps its state.
* Transitions are counted per direction; the first judgement out of "unknown" is *not* a transition (a
  restart of the daemon would otherwise count one for every listener). It is still reported by `feed`
  so that a first "down" can be logged.
* Thresholds can change (a reload): the new ones apply from the next result; the runs counted so far stay.

Presets (`PRESETS`) are data: the thresholds of SBC families' keep-alive defaults, with the documentation
they come from in docs/thresholds.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PRESETS",
    "STATES",
    "State",
    "Thresholds",
    "UpDown",
]

State = Literal["unknown", "up", "down"]
STATES: Final[tuple[State, ...]] = ("unknown", "up", "down")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How many consecutive failures take a listener down, and consecutive successes bring it up."""

    failures_before_down: int = 1
    successes_before_up: int = 1

    def __post_init__(self) -> None:
        if self.failures_before_down < 1 or self.successes_before_up < 1:
            raise ValueError("thresholds must be at least 1")


DEFAULT_THRESHOLDS: Final = Thresholds()

#: preset name -> thresholds. "none" is the default: every result judges (the raw result).
PRESETS: Final = MappingProxyType(
    {
        "none": Thresholds(1, 1),
        # AudioCodes Proxy Set keep-alive: offline when a keep-alive OPTIONS fails (after its SIP
        # retransmissions); online again after 'Success Detection Retries' (default 1) good answers.
        "audiocodes": Thresholds(1, 1),
        # Cisco CUBE `voice class sip-options-keepalive`: retry 5 before the dial-peer is busied out;
        # one answer brings it back.
        "cisco-cube": Thresholds(5, 1),
        # Kamailio dispatcher: ds_probing_threshold (default 1) failures, ds_inactive_threshold (default
        # 1) successes.
        "kamailio-dispatcher": Thresholds(1, 1),
    }
)


class UpDown:
    """The up/down state of one listener address, judged by `thresholds` (see the module docstring)."""

    __slots__ = ("down_transitions", "failures", "state", "successes", "thresholds", "up_transitions")

    def __init__(self, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
        self.thresholds = thresholds
        self.state: State = "unknown"
        self.failures = 0  # consecutive failures, up to now
        self.successes = 0  # consecutive successes, up to now
        self.up_transitions = 0  # down -> up
        self.down_transitions = 0  # up -> down

    def feed(self, success: bool) -> State | None:
        """Judge one result; return the new state if it changed (also out of "unknown"), else None."""
        if success:
            self.successes += 1
            self.failures = 0
            if self.state != "up" and self.successes >= self.thresholds.successes_before_up:
                return self._move("up")
        else:
            self.failures += 1
            self.successes = 0
            if self.state != "down" and self.failures >= self.thresholds.failures_before_down:
                return self._move("down")
        return None

    def _move(self, to: State) -> State:
        if self.state != "unknown":
            if to == "up":
                self.up_transitions += 1
            else:
                self.down_transitions += 1
        self.state = to
        return to

    @property
    def judged(self) -> bool:
        """True once the state is "up" or "down"."""
        return self.state != "unknown"
