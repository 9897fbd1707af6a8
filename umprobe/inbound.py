"""Inbound OPTIONS: who pings us, how often, and how long since the last good exchange (no clock, no I/O).

A `[[listen]]` section of probes.toml (or `umprobe peer --sip`) answers SIP OPTIONS that a UM server,
Microsoft's Direct Routing proxy or an SBC sends *to* us. This module keeps the books of those pings; the
listener (umprobe.peer.sip_responder) feeds it, the exporter and the peer's log read it. Every time is an
argument (unix seconds), so the tests drive it with a fake clock.

Theory of operation
-------------------
* **Identity.** Who is calling is decided once per connection (`caller_from`): over TLS with a client
  certificate, the certificate's FQDN (its subject CN when that is a host name also among the DNS SANs or
  when there are no DNS SANs, else the first DNS SAN); otherwise the source IP address (IPv4-mapped IPv6
  written as IPv4). The From and Contact hosts of each request are kept as *detail* (status page, logs),
  never as the identity: anyone can write any From.
* **Per identity** (`_Identity`): OPTIONS counted by the answer sent (`"200"`, or `"unsent"` when the
  answer could not be written), first and last seen, the last *good* exchange (a 2xx answer that was
  written completely), and the observed interval: the median of the last `INTERVAL_WINDOW` gaps between
  two OPTIONS of the identity (a median, so one pause or one burst does not swing it).
* **Demotion view** (`InboundBook.view`): the seconds since the last good exchange (the *silence*) against
  two thresholds, Microsoft's two rules for Direct Routing: 3 minutes without OPTIONS (older docs) and
  5 minutes (newer docs). `active` (silence <= at_risk_after), `at_risk` (> at_risk_after), `demoted`
  (> demoted_after); `waiting` for an identity with no good exchange yet that is not overdue. An identity
  in `expect` that has never been seen is silent since the book started, so it goes `waiting`, `at_risk`,
  `demoted` as the listener's uptime crosses the thresholds; an identity that was seen but never got a
  good exchange is silent since it was first seen.
* **Bounded.** Identities in `expect` are always kept. At most `max_identities` others are: when one more
  arrives, the one seen least recently is evicted and its counts move to the `OTHER` bucket, so the total
  over all identities never goes down. The identity is a label value of the daemon's metrics; this bound
  and `expect` are what bound it.
* **State changes** (`StateWatch`): a caller that looks at the view now and then (the peer's log, the
  daemon's log) learns which identities changed state since its last look.
"""

from __future__ import annotations

import ipaddress
import re
import statistics
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "ANSWERS",
    "DEFAULT_AT_RISK_AFTER",
    "DEFAULT_DEMOTED_AFTER",
    "DEFAULT_MAX_IDENTITIES",
    "INTERVAL_WINDOW",
    "OTHER",
    "STATES",
    "Caller",
    "IdentityView",
    "InboundBook",
    "InboundView",
    "StateChange",
    "StateWatch",
    "caller_from",
    "certificate_identity",
    "normalise_identity",
    "uri_host",
]

#: Microsoft's rules for Direct Routing: an SBC without OPTIONS for 3 minutes (older docs) or 5 minutes
#: (newer docs) is demoted.
DEFAULT_AT_RISK_AFTER: Final = 180.0
DEFAULT_DEMOTED_AFTER: Final = 300.0
DEFAULT_MAX_IDENTITIES: Final = 64
#: How many of the latest gaps between two OPTIONS the observed interval is the median of.
INTERVAL_WINDOW: Final = 8
#: The identity value of the bucket that holds the counts of evicted identities (never a host or address).
OTHER: Final = "(other)"
#: Every state of the demotion view, in the order of the status page and the metric.
STATES: Final = ("active", "at_risk", "demoted", "waiting")
State = Literal["active", "at_risk", "demoted", "waiting"]
#: The answers counted per identity from the start: a status code we sent, or "unsent".
ANSWERS: Final = ("200", "unsent")

_HOST: Final = re.compile(r"(?=.{1,253}$)(?:\*\.)?[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_-]{1,63})*")
_CN: Final = re.compile(r"(?:^|,)CN=((?:[^,\\]|\\.)*)", re.IGNORECASE)
_DETAIL_MAX: Final = 255
_SIP_URI: Final = re.compile(r"sips?:", re.IGNORECASE)


def normalise_identity(text: str) -> str | None:
    """An identity as this module writes it: an IP address in its short form (IPv4-mapped IPv6 as IPv4),
    or a host name in lower case without a trailing dot; None for anything else."""
    text = text.strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        name = text.rstrip(".").lower()
        return name if _HOST.fullmatch(name) else None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _subject_cn(subject: str) -> str | None:
    """The (first) CN of an RFC 4514 subject string, unescaped."""
    match = _CN.search(subject)
    if match is None:
        return None
    return re.sub(r"\\(.)", r"\1", match.group(1))


def certificate_identity(subject: str, san: Sequence[str]) -> str | None:
    """The FQDN a client certificate stands for: its CN when that is a host name and also a DNS SAN (or
    there are no DNS SANs), else its first DNS SAN that is a host name; None when it names no host.

    `subject` is RFC 4514 (`CertInfo.subject`), `san` as `CertInfo.san` writes it (`"DNS:name"`, ...)."""
    names = [n for n in (normalise_identity(s[4:]) for s in san if s.startswith("DNS:")) if n is not None]
    cn_text = _subject_cn(subject)
    cn = normalise_identity(cn_text) if cn_text is not None else None
    if cn is not None and not _is_ip(cn) and (not names or cn in names):
        return cn
    return names[0] if names else None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def uri_host(value: str | None) -> str | None:
    """The host of the SIP URI in a From, To or Contact header value (`"A" <sip:u@host:5061;x>;tag=1` ->
    `host`), for display only; None when there is no sip:/sips: URI in it."""
    if not value:
        return None
    text = value
    if "<" in text:
        text = text[text.index("<") + 1 :].split(">", 1)[0]
    match = _SIP_URI.search(text)
    if match is None:
        return None
    rest = text[match.end() :]
    rest = re.split(r"[;?>,\s]", rest, maxsplit=1)[0]
    rest = rest.rsplit("@", 1)[-1]
    if rest.startswith("["):
        host = rest[: rest.find("]") + 1] if "]" in rest else rest
    else:
        host = rest.split(":", 1)[0]
    host = "".join(c for c in host if c.isprintable())[:_DETAIL_MAX]
    return host or None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is at the other end of one inbound connection."""

    identity: str  # the certificate FQDN, or the source address
    kind: Literal["certificate", "address"]
    source: str  # the source address (also for a certificate identity)


def caller_from(source: str, cert_subject: str | None = None, cert_san: Sequence[str] = ()) -> Caller:
    """The caller of a connection from `source` (an IP address) that presented a client certificate with
    `cert_subject` and `cert_san` (None: no certificate, or plain TCP)."""
    address = normalise_identity(source) or source
    if cert_subject is not None:
        name = certificate_identity(cert_subject, cert_san)
        if name is not None:
            return Caller(identity=name, kind="certificate", source=address)
    return Caller(identity=address, kind="address", source=address)


@dataclass(frozen=True, slots=True)
class IdentityView:
    """One identity in the demotion view, at the time the view was made."""

    identity: str
    expected: bool
    kind: Literal["certificate", "address", "expected"]  # "expected": in `expect`, never seen
    answers: tuple[tuple[str, int], ...]  # OPTIONS by answer: ANSWERS first, then any other
    first_seen: float | None
    last_seen: float | None
    last_good: float | None
    interval: float | None  # the median of the latest gaps between two OPTIONS; None before two
    silence: float  # seconds since the last good exchange (see the module docstring without one)
    state: State
    source: str | None  # the source address of the latest OPTIONS
    from_host: str | None  # the From host of the latest OPTIONS (detail, never an identity)
    contact_host: str | None  # the Contact host of the latest OPTIONS

    @property
    def total(self) -> int:
        return sum(count for _, count in self.answers)


@dataclass(frozen=True, slots=True)
class InboundView:
    """A whole book at one moment: the identities (expected first, in `expect` order, then the others by
    name), the evicted identities' counts (`other`), how many were evicted, and the thresholds."""

    listen: str
    at: float
    identities: tuple[IdentityView, ...]
    other: tuple[tuple[str, int], ...]
    evicted: int
    at_risk_after: float
    demoted_after: float
    max_identities: int


@dataclass(slots=True)
class _Identity:
    identity: str
    expected: bool
    kind: Literal["certificate", "address", "expected"]
    answers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ANSWERS, 0))
    first_seen: float | None = None
    last_seen: float | None = None
    last_good: float | None = None
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=INTERVAL_WINDOW))
    source: str | None = None
    from_host: str | None = None
    contact_host: str | None = None


def _state(silence: float, good: bool, at_risk_after: float, demoted_after: float) -> State:
    if silence > demoted_after:
        return "demoted"
    if silence > at_risk_after:
        return "at_risk"
    return "active" if good else "waiting"


def _is_good(answer: str) -> bool:
    return len(answer) == 3 and answer.startswith("2") and answer.isdigit()


class InboundBook:
    """The inbound OPTIONS of one listener, per calling identity (module docstring).

    `started_at` is when the listener started (unix seconds): the silence of an expected identity never seen.
    """

    def __init__(
        self,
        listen: str,
        *,
        started_at: float,
        expect: Iterable[str] = (),
        max_identities: int = DEFAULT_MAX_IDENTITIES,
        at_risk_after: float = DEFAULT_AT_RISK_AFTER,
        demoted_after: float = DEFAULT_DEMOTED_AFTER,
    ) -> None:
        if max_identities < 1:
            raise ValueError("max_identities must be at least 1")
        if not 0 < at_risk_after < demoted_after:
            raise ValueError("0 < at_risk_after < demoted_after must hold")
        self.listen = listen
        self.started_at = started_at
        self.max_identities = max_identities
        self.at_risk_after = at_risk_after
        self.demoted_after = demoted_after
        self._expected: dict[str, _Identity] = {}
        for text in expect:
            name = normalise_identity(text)
            if name is None:
                raise ValueError(f"expect: {text!r} is neither a host name nor an IP address")
            self._expected.setdefault(name, _Identity(name, expected=True, kind="expected"))
        self._others: OrderedDict[str, _Identity] = OrderedDict()  # least recently seen first
        self._other: dict[str, int] = dict.fromkeys(ANSWERS, 0)
        self.evicted = 0

    @property
    def expected(self) -> tuple[str, ...]:
        return tuple(self._expected)

    def record(
        self,
        caller: Caller,
        answer: str,
        at: float,
        *,
        from_host: str | None = None,
        contact_host: str | None = None,
    ) -> None:
        """One inbound OPTIONS from `caller` at `at`, and the answer we sent (`"200"`) or `"unsent"`."""
        entry = self._expected.get(caller.identity)
        if entry is None:
            entry = self._others.get(caller.identity)
            if entry is None:
                if len(self._others) >= self.max_identities:
                    self._evict()
                entry = self._others[caller.identity] = _Identity(caller.identity, False, caller.kind)
            else:
                self._others.move_to_end(caller.identity)
        if entry.kind == "expected":
            entry.kind = caller.kind
        if entry.last_seen is not None:
            entry.gaps.append(max(0.0, at - entry.last_seen))
        if entry.first_seen is None:
            entry.first_seen = at
        entry.last_seen = at
        entry.answers[answer] = entry.answers.get(answer, 0) + 1
        if _is_good(answer):
            entry.last_good = at
        entry.source = caller.source
        entry.from_host = from_host
        entry.contact_host = contact_host

    def _evict(self) -> None:
        _, gone = self._others.popitem(last=False)
        for answer, count in gone.answers.items():
            self._other[answer] = self._other.get(answer, 0) + count
        self.evicted += 1

    def view(self, now: float) -> InboundView:
        """The demotion view at `now` (unix seconds)."""
        others = sorted(self._others.values(), key=lambda entry: entry.identity)
        identities = tuple(self._identity_view(entry, now) for entry in (*self._expected.values(), *others))
        return InboundView(
            listen=self.listen,
            at=now,
            identities=identities,
            other=_answers(self._other),
            evicted=self.evicted,
            at_risk_after=self.at_risk_after,
            demoted_after=self.demoted_after,
            max_identities=self.max_identities,
        )

    def _identity_view(self, entry: _Identity, now: float) -> IdentityView:
        if entry.last_good is not None:
            since = entry.last_good
        elif entry.expected or entry.first_seen is None:
            since = self.started_at
        else:
            since = entry.first_seen
        silence = max(0.0, now - since)
        return IdentityView(
            identity=entry.identity,
            expected=entry.expected,
            kind=entry.kind,
            answers=_answers(entry.answers),
            first_seen=entry.first_seen,
            last_seen=entry.last_seen,
            last_good=entry.last_good,
            interval=statistics.median(entry.gaps) if entry.gaps else None,
            silence=silence,
            state=_state(silence, entry.last_good is not None, self.at_risk_after, self.demoted_after),
            source=entry.source,
            from_host=entry.from_host,
            contact_host=entry.contact_host,
        )


def _answers(counts: dict[str, int]) -> tuple[tuple[str, int], ...]:
    extra = sorted(answer for answer in counts if answer not in ANSWERS)
    return tuple((answer, counts.get(answer, 0)) for answer in (*ANSWERS, *extra))


@dataclass(frozen=True, slots=True)
class StateChange:
    """An identity whose state differs from the last look (`before` None: first time in the view)."""

    identity: IdentityView
    before: State | None


class StateWatch:
    """Remembers each identity's state between two looks at a view; `changes` says what moved."""

    def __init__(self) -> None:
        self._states: dict[str, State] = {}

    def changes(self, view: InboundView) -> list[StateChange]:
        out: list[StateChange] = []
        states: dict[str, State] = {}
        for identity in view.identities:
            before = self._states.get(identity.identity)
            states[identity.identity] = identity.state
            if before != identity.state:
                out.append(StateChange(identity, before))
        self._states = states
        return out
