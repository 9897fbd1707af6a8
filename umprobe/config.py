"""probes.toml -> frozen configuration values for the daemon (`umprobe run`) and `umprobe config check`.

The file format is documented key by key in docs/configuration.md; the set of accepted keys lives here as
data (`KNOWN_KEYS`), and a test keeps the two in step.

Theory of operation
-------------------
1. `tomllib` parses the text. A syntax error becomes one `ConfigError` line with tomllib's line and column.
2. Every table is checked against `KNOWN_KEYS` before anything else is read from it: an unknown key is an
   error naming its full key path, with a "did you mean" when a known key is close.
3. Module keys are validated *where they are written* (`[defaults]` once, each `[modules.NAME]` once) and
   each value keeps its origin, the key path it was written at. Modules are then built by overlay:

       built-in defaults < [defaults] < [modules.NAME] < a [[targets]] entry's overrides

   so an error that involves two values (`timeout` not below `interval`, `min_tls` above `max_tls`) blames
   the more specific of the two, at the place where it was written.
4. Targets expand into probes: a `module` target gives one probe per host; a `profile` target gives one
   probe per host and Exchange UM listener (`umprobe.profiles.expand_profile`), plain listeners through
   `tcp_module` and TLS listeners through `tls_module`; a profile's `port_map` moves listeners to the
   ports they are reached at (NAT, port forwarding, the demo's loopback ports) without changing what they
   are. Probe ids and `probe` label values must be unique.
5. TLS modules are judged by `make_client_context`, the same code the probes use: cipher strings always,
   files (readable, a certificate, a key that matches it) unless `check_files=False`.
6. `[[rtp]]` entries become `RtpProbeConfig`s: one RTP range sweep per echo peer (docs/rtp.md). They share
   nothing with modules; their keys are validated in their own table, the secret file is read (and its
   length checked) unless `check_files=False`, and the timeout is held against
   `umprobe.probes.rtp.estimate_seconds`: a cycle that cannot finish before its deadline is an error at
   load time, not a stream of `not_measured` ports at run time. `peer` label values must be unique.

Line numbers: tomllib reports none once a file has parsed. `_SourceIndex` runs a small TOML lexer over the
text (strings of all four kinds, comments, brackets) and records the line of every table header and every
`key =` statement under its full key path, so an error can say `probes.toml:LINE:`. A key inside an inline
table is reported at the line of the inline table; a path it cannot place is reported without a line.

7. `resolution = "rfc3263"` on a module makes its probes resolve by NAPTR -> SRV -> A/AAAA
   (umprobe.net.rfc3263, docs/resolution.md); a module target that names no port (neither the target's nor
   the module's `port`) then takes its ports from NAPTR/SRV. `[dns]` says which nameservers those lookups ask
   (`nameservers` or `resolv_conf`, default the system's resolv.conf); it is an error when no module resolves
   by RFC 3263. Built-in modules always resolve A/AAAA.

File paths (`ca_file`, `cert_file`, `key_file`, `secret_file`, `resolv_conf`) are relative to the directory
of the config file.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, NoReturn

from umprobe.errors import UserError
from umprobe.inbound import (
    DEFAULT_AT_RISK_AFTER,
    DEFAULT_DEMOTED_AFTER,
    DEFAULT_MAX_IDENTITIES,
    normalise_identity,
)
from umprobe.media.sampling import MAX_RTP_PORT, MIN_RTP_PORT, even_ports
from umprobe.net.errors import TLSConfigError
from umprobe.net.tls import TLS_VERSIONS, TLSClientConfig, make_client_context, make_server_context
from umprobe.probes.rtp import RtpProbeSpec, estimate_seconds
from umprobe.probes.sip_options import SipProbeSpec
from umprobe.profiles import (
    EXCHANGE_PROFILES,
    PROFILES,
    UM_MODES,
    ListenerSpec,
    expand_profile,
    get_profile,
    request_shape,
)
from umprobe.secretfile import read_secret
from umprobe.shard import valid_vantage
from umprobe.sip import DEFAULT_ACCEPT, parse_accept_status
from umprobe.targets import TargetError, parse_target
from umprobe.updown import DEFAULT_THRESHOLDS, PRESETS, Thresholds

__all__ = [
    "BUILTIN_LABELS",
    "BUILTIN_MODULES",
    "DEFAULT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "KNOWN_KEYS",
    "LISTEN_KEYS",
    "LOG_LEVELS",
    "MODULE_KEYS",
    "PROFILE_ROLES",
    "RTP_DEFAULT_INTERVAL",
    "RTP_KEYS",
    "TARGET_KEYS",
    "TLS_ONLY_KEYS",
    "Config",
    "ConfigError",
    "DnsConfig",
    "ExporterConfig",
    "ListenConfig",
    "LogConfig",
    "ModuleConfig",
    "ProbeConfig",
    "RtpProbeConfig",
    "SchedulerConfig",
    "describe",
    "duration_text",
    "load_config",
    "parse_config",
]

# --------------------------------------------------------------------------------------------------------
# The schema as data

MODULE_KEYS: Final = frozenset(
    {
        "transport",
        "port",
        "ca_file",
        "cert_file",
        "key_file",
        "insecure",
        "min_tls",
        "max_tls",
        "ciphers",
        "server_name",
        "accept_status",
        "timeout",
        "interval",
        "families",
        "from_domain",
        "failures_before_down",
        "successes_before_up",
        "preset",
        "resolution",
    }
)
#: The values of a module's `resolution`: getaddrinfo A/AAAA of the host, or RFC 3263 §4.
RESOLUTIONS: Final = ("a", "rfc3263")
#: Keys that only mean something on a TLS module; written in a plain TCP module's own table they are errors.
TLS_ONLY_KEYS: Final = frozenset(
    {"ca_file", "cert_file", "key_file", "insecure", "min_tls", "max_tls", "ciphers", "server_name"}
)
_PROFILE_ONLY_KEYS: Final = (
    "um_mode",
    "tcp_module",
    "tls_module",
    "udp_module",
    "roles",
    "call_router_tcp_port",
    "call_router_tls_port",
    "port_map",
    "sbc_fqdn",
    "sbc_port",
    "variant",
    "transports",
)
#: Keys only the Exchange profiles take, and keys only the profiles beyond Exchange take (umprobe.profiles).
_EXCHANGE_ONLY_KEYS: Final = ("um_mode", "roles", "call_router_tcp_port", "call_router_tls_port")
_SBC_ONLY_KEYS: Final = ("sbc_fqdn", "sbc_port", "variant", "transports")
TARGET_KEYS: Final = frozenset(
    {"host", "name", "labels", "module", "port", "profile", "timeout", "interval", "server_name"}
    | set(_PROFILE_ONLY_KEYS)
)

#: The keys of an `[[rtp]]` entry: one echo peer (or plain UDP echo) whose RTP range the daemon sweeps.
RTP_KEYS: Final = frozenset(
    {
        *("peer", "name", "mode", "secret_file", "range", "samples", "packets", "concurrency"),
        *("interval", "timeout", "media_host", "ports", "labels"),
        *("tls", "ca_file", "cert_file", "key_file", "server_name", "insecure"),
    }
)
_RTP_TLS_KEYS: Final = ("ca_file", "cert_file", "key_file", "server_name", "insecure")

#: The keys of a `[[listen]]` entry: a listener that answers inbound OPTIONS and records who sends them
#: (umprobe.inbound, docs/inbound.md).
LISTEN_KEYS: Final = frozenset(
    {
        *("name", "transport", "address", "cert_file", "key_file", "ca_file", "require_client_cert"),
        *("expect", "max_identities", "at_risk_after", "demoted_after", "idle_timeout"),
    }
)
_LISTEN_TLS_KEYS: Final = ("cert_file", "key_file", "ca_file", "require_client_cert")
_LISTEN_IDLE_TIMEOUT: Final = 120.0

#: Every key the config accepts, per section. "top" is the file's top level; "modules.NAME" is any module.
KNOWN_KEYS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "top": frozenset(
            {"defaults", "modules", "targets", "rtp", "listen", "exporter", "scheduler", "log", "dns"}
        ),
        "defaults": MODULE_KEYS,
        "modules.NAME": MODULE_KEYS,
        "targets": TARGET_KEYS,
        "rtp": RTP_KEYS,
        "listen": LISTEN_KEYS,
        "exporter": frozenset({"listen", "probe_allow", "vantage"}),
        "scheduler": frozenset({"max_concurrency"}),
        "log": frozenset({"format", "level"}),
        "dns": frozenset({"nameservers", "resolv_conf"}),
    }
)

#: Label names the exporter sets itself (or Prometheus does); a target's `labels` may not use them.
BUILTIN_LABELS: Final = frozenset(
    {
        *("probe", "target", "address", "port", "transport", "listener", "family", "vantage"),
        *("phase", "reason", "version", "le", "quantile", "job", "instance"),
        *("peer", "block", "direction", "result"),  # the RTP series'
        *("profile", "rule"),  # the profile policy series'
        "to",  # umprobe_listener_transitions_total
        "step",  # umprobe_sip_resolution_step_info
    }
)
#: Modules that exist without being defined (a `[modules.NAME]` of the same name replaces one).
BUILTIN_MODULES: Final[Mapping[str, str]] = MappingProxyType(
    {"sip_tcp": "tcp", "sip_tls": "tls", "sip_udp": "udp"}
)
PROFILE_ROLES: Final = ("call_router", "um_service", "um_worker")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
DEFAULT_TIMEOUT: Final = 5.0
DEFAULT_INTERVAL: Final = 30.0
#: An [[rtp]] entry's default interval: a cycle takes seconds (`estimate_seconds`), not milliseconds.
RTP_DEFAULT_INTERVAL: Final = 60.0
_RTP_DEFAULT_RANGE: Final = (1024, 65535)
_RTP_DEFAULTS: Final = RtpProbeSpec(host="-", port=1, secret=b"x" * 16)  # samples, packets, concurrency
# What an RtpProbeSpec holds instead of the secret when the config is only checked (check_files=False):
# such a config is never run (the daemon always loads with file checks), and a peer would refuse it anyway.
_UNREAD_SECRET: Final = b"<secret file not read: check_files=False>"
_DEFAULT_LISTEN: Final = "127.0.0.1:9874"
_FAMILIES: Final = ("ipv4", "ipv6")
_MAX_CONCURRENCY: Final = 100_000
_MAX_THRESHOLD: Final = 1000

_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MODULE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_HOST_NAME: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_*](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?"
)
_TOML_POSITION: Final = re.compile(
    r"^(?P<msg>.*?)\s*\(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$"
)

KeyPath = tuple[str | int, ...]


# --------------------------------------------------------------------------------------------------------
# Values


class ConfigError(UserError):
    """probes.toml is unusable. `str(e)` is one line: "FILE[:LINE]: KEY.PATH = VALUE: what is wrong".

    `source`, `key` (the dotted key path or None) and `line` (or None) are kept for tests and tools.
    """

    def __init__(self, message: str, *, source: str, key: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.key = key
        self.line = line


@dataclass(frozen=True, slots=True)
class ModuleConfig:
    """How to probe: transport, TLS, judgement and timing. `port` None: 5060 for tcp and udp, 5061 for tls."""

    name: str
    transport: Literal["tcp", "tls", "udp"]
    port: int | None
    tls: TLSClientConfig | None  # None for transports "tcp" and "udp"
    server_name: str | None
    accept_status: frozenset[int]
    timeout: float
    interval: float
    families: tuple[str, ...]
    from_domain: str | None
    thresholds: Thresholds = DEFAULT_THRESHOLDS  # up/down judgement (umprobe.updown, docs/thresholds.md)
    preset: str = "none"  # the `preset` the thresholds started from
    resolution: Literal["a", "rfc3263"] = "a"  # how hosts become addresses (docs/resolution.md)

    @property
    def default_port(self) -> int:
        """The port a module target uses when it names none: the module's, else the transport's default."""
        return self.port if self.port is not None else (5061 if self.transport == "tls" else 5060)

    def spec_for(
        self,
        host: str,
        port: int,
        *,
        listener: str = "custom",
        uri_scheme: Literal["sip", "sips"] = "sip",
        port_given: bool = True,
    ) -> SipProbeSpec:
        """The probe of one listener through this module (the daemon's probes and /probe's ad-hoc ones).
        `port_given=False` (no port named anywhere): an RFC 3263 module lets NAPTR/SRV choose the ports."""
        rfc3263 = self.resolution == "rfc3263"
        return SipProbeSpec(
            host=host,
            port=port,
            transport=self.transport,
            listener=listener,
            tls=self.tls,
            server_name=self.server_name,
            accept_status=self.accept_status,
            families=self.families,
            from_domain=self.from_domain,
            uri_scheme=uri_scheme,
            resolution=self.resolution,
            port_given=port_given or not rfc3263,
        )


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """One probe the daemon runs on its own interval: a listener of a target, through a module."""

    id: str  # "host|listener|transport|port|module": stable identity for schedule spread and reload diffing
    name: str  # value of the `probe` label: "<target name>:<port>/<transport>"
    target: str  # the host (value of the `target` label)
    module: str
    spec: SipProbeSpec
    interval: float
    timeout: float
    labels: tuple[tuple[str, str], ...]  # the target's extra labels, sorted by name
    required: bool = True
    group: str | None = None
    profile: str | None = None  # the target's profile, when it has one: its policy judges every run
    thresholds: Thresholds = DEFAULT_THRESHOLDS  # its module's up/down thresholds (umprobe.updown)


@dataclass(frozen=True, slots=True)
class RtpProbeConfig:
    """One `[[rtp]]` entry: the RTP range of an echo peer (or a plain UDP echo), swept one cycle per run.

    The scheduler runs it like a `ProbeConfig` (same spread, deadline, no overlap, reload by `id`); what a
    run measures is `spec` (`umprobe.probes.rtp.probe_rtp`), which cycle of the sweep is the scheduler's
    choice. `spec.secret` holds the secret read from `secret_file` (a placeholder when the config was
    loaded with `check_files=False`, which the daemon never does).
    """

    id: str  # "rtp|host|port|mode|name": stable identity for schedule spread and reload diffing
    name: str  # value of the `peer` label
    target: str  # the peer's (or plain echo's) host
    spec: RtpProbeSpec
    interval: float
    timeout: float
    labels: tuple[tuple[str, str], ...]  # the entry's extra labels, sorted by name
    secret_file: str | None = None  # the path, for `config check` and the status page (never the contents)

    @property
    def cycles_per_sweep(self) -> int:
        """Runs it takes to sample every even port of the range once."""
        return self.spec.cycles_per_sweep()

    @property
    def sweep_seconds(self) -> float:
        """How long one full sweep of the range takes at this interval: cycles_per_sweep x interval."""
        return self.cycles_per_sweep * self.interval


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    """`[exporter]`: where the HTTP face listens and which hosts `/probe?target=` may probe."""

    listen: str = _DEFAULT_LISTEN
    probe_allow: tuple[str, ...] = ()  # () = only hosts in [[targets]]; "*" = any; else CIDRs or host names
    vantage: str | None = None  # the site this daemon probes from: a `vantage` label on every probe series


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """`[dns]`: the nameservers of `resolution = "rfc3263"` modules. Neither set: the system's resolv.conf."""

    nameservers: tuple[tuple[str, int], ...] | None = None  # (address, port) pairs
    resolv_conf: str | None = None  # a file in resolv.conf format (absolute path)

    def describe(self) -> str:
        """Where the lookups go, for `config check` and the status page."""
        if self.nameservers is not None:
            return "nameservers " + ", ".join(
                f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in self.nameservers
            )
        return f"the nameservers of {self.resolv_conf or '/etc/resolv.conf'}"


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """`[scheduler]`: how many probes may run at once."""

    max_concurrency: int = 64


@dataclass(frozen=True, slots=True)
class LogConfig:
    """`[log]`: log line format and level."""

    format: Literal["text", "json"] = "text"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """One `[[listen]]` entry: where inbound OPTIONS are answered and whose are expected (docs/inbound.md).

    `name` is the value of the `listen` label; `host` None is every interface. TLS files are absolute paths
    (relative ones resolved against the config's directory)."""

    name: str
    transport: Literal["tcp", "tls"]
    address: str  # as written, "HOST:PORT"
    host: str | None
    port: int
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    require_client_cert: bool = False
    expect: tuple[str, ...] = ()
    max_identities: int = DEFAULT_MAX_IDENTITIES
    at_risk_after: float = DEFAULT_AT_RISK_AFTER
    demoted_after: float = DEFAULT_DEMOTED_AFTER
    idle_timeout: float = _LISTEN_IDLE_TIMEOUT

    @property
    def id(self) -> str:
        """Stable identity ("listen|transport|address"): which shard runs it, what a reload compares."""
        return f"listen|{self.transport}|{self.address}"


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated probes.toml."""

    source: str
    modules: Mapping[str, ModuleConfig]
    probes: tuple[ProbeConfig, ...]
    exporter: ExporterConfig = ExporterConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    log: LogConfig = LogConfig()
    rtp: tuple[RtpProbeConfig, ...] = ()  # the [[rtp]] entries
    listen: tuple[ListenConfig, ...] = ()  # the [[listen]] entries (inbound OPTIONS)
    dns: DnsConfig = DnsConfig()  # [dns]: for the modules with resolution = "rfc3263"

    @property
    def jobs(self) -> tuple[ProbeConfig | RtpProbeConfig, ...]:
        """Everything the scheduler runs: the SIP probes, then the RTP sweeps."""
        return (*self.probes, *self.rtp)

    @property
    def extra_label_names(self) -> tuple[str, ...]:
        """Every extra label name any probe carries, sorted (probes without one get an empty value)."""
        return tuple(sorted({name for probe in self.probes for name, _ in probe.labels}))

    @property
    def target_hosts(self) -> frozenset[str]:
        """The hosts of [[targets]]: what `/probe` may probe when `probe_allow` is empty."""
        return frozenset(probe.target for probe in self.probes)


# --------------------------------------------------------------------------------------------------------
# Rendering keys and values for messages


def _format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += f".{text}" if out else text
    return out


def _render(value: object, limit: int = 80) -> str:
    """A value as it would be written in TOML, on one line, cut at `limit` characters."""
    text = _render_inner(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _render_inner(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render_inner(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_format_path((str(k),))} = {_render_inner(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    return json.dumps(str(value))


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------------------
# Line numbers: a small TOML lexer that maps key paths to the line they are written on


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["str", "bare", "punct", "nl", "other"]
    text: str
    line: int
    start: int
    end: int


def _string_end(text: str, i: int) -> int:
    """The index just past the string starting at `i` (any of TOML's four kinds)."""
    for delim in ('"""', "'''"):
        if text.startswith(delim, i):
            j = i + 3
            while True:
                if delim == '"""' and text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(delim, j):
                    j += 3
                    for _ in range(2):  # up to two quotes of the content may sit right before the delimiter
                        if j < len(text) and text[j] == delim[0]:
                            j += 1
                    return j
                j += 1
    quote = text[i]
    j = i + 1
    while text[j] != quote:
        if quote == '"' and text[j] == "\\":
            j += 1
        j += 1
    return j + 1


def _lex(text: str) -> Iterator[_Token]:
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            yield _Token("nl", c, line, i, i + 1)
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in "\"'":
            end = _string_end(text, i)
            yield _Token("str", text[i:end], line, i, end)
            line += text.count("\n", i, end)
            i = end
        elif c in "[]{}=.,":
            yield _Token("punct", c, line, i, i + 1)
            i += 1
        elif m := _BARE_KEY.match(text, i):
            yield _Token("bare", m.group(), line, i, m.end())
            i = m.end()
        else:
            yield _Token("other", c, line, i, i + 1)
            i += 1


def _key_text(token: _Token) -> str:
    if token.kind != "str":
        return token.text
    try:
        value = tomllib.loads(f"k = {token.text}")["k"]
    except tomllib.TOMLDecodeError:
        return token.text.strip("\"'")
    return str(value)


class _SourceIndex:
    """Key path -> line number of a parsed TOML text (best effort, never raises)."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        try:
            self._scan(list(_lex(text)))
        except Exception:  # a lexer slip must never hide the real error: report without lines instead
            self._lines.clear()

    def line(self, path: KeyPath) -> int | None:
        for k in range(len(path), 0, -1):
            found = self._lines.get(path[:k])
            if found is not None:
                return found
        return None

    def _record(self, path: KeyPath, line: int) -> None:
        for k in range(1, len(path) + 1):
            self._lines.setdefault(path[:k], line)

    def _scan(self, tokens: list[_Token]) -> None:
        arrays: dict[KeyPath, int] = {}
        table: KeyPath = ()
        i, n = 0, len(tokens)
        while i < n:
            tok = tokens[i]
            if tok.kind == "nl":
                i += 1
                continue
            if tok.kind == "punct" and tok.text == "[":
                double = i + 1 < n and tokens[i + 1].text == "[" and tokens[i + 1].start == tok.end
                i += 2 if double else 1
                parts: list[str] = []
                while i < n and tokens[i].text != "]":
                    if tokens[i].kind in ("bare", "str"):
                        parts.append(_key_text(tokens[i]))
                    i += 1
                concrete: list[str | int] = []
                for j, part in enumerate(parts):
                    concrete.append(part)
                    here = tuple(concrete)
                    last = j == len(parts) - 1
                    if last and double:
                        arrays[here] = arrays.get(here, 0) + 1
                        concrete.append(arrays[here] - 1)
                    elif here in arrays:
                        concrete.append(arrays[here] - 1)
                table = tuple(concrete)
                self._record(table, tok.line)
                while i < n and tokens[i].kind != "nl":
                    i += 1
                continue
            # a key/value statement: dotted key, "=", then the value up to a newline outside brackets
            key: list[str] = []
            while i < n and tokens[i].text != "=":
                if tokens[i].kind in ("bare", "str"):
                    key.append(_key_text(tokens[i]))
                i += 1
            self._record((*table, *key), tok.line)
            i += 1
            depth = 0
            while i < n and not (tokens[i].kind == "nl" and depth == 0):
                if tokens[i].text in "[{" and tokens[i].kind == "punct":
                    depth += 1
                elif tokens[i].text in "]}" and tokens[i].kind == "punct":
                    depth -= 1
                i += 1


# --------------------------------------------------------------------------------------------------------
# The builder


@dataclass(frozen=True, slots=True)
class _Val:
    """A validated value, the value as written, and where it was written (None: a built-in default)."""

    value: object
    raw: object
    origin: KeyPath | None


_MISSING: Final = object()


def _rank(origin: KeyPath | None) -> int:
    if origin is None:
        return 0
    return {"defaults": 1, "modules": 2, "targets": 3}.get(str(origin[0]), 0)


class _Reader:
    """Holds the source for error messages; every check raises one ConfigError through `fail`."""

    def __init__(self, text: str, source: str, base_dir: Path | None) -> None:
        self.text = text
        self.source = source
        self.base_dir = base_dir
        self._index: _SourceIndex | None = None

    def fail(self, path: KeyPath, detail: str, value: object = _MISSING) -> NoReturn:
        if self._index is None:
            self._index = _SourceIndex(self.text)
        line = self._index.line(path) if path else None
        where = f"{self.source}:{line}" if line is not None else self.source
        key = _format_path(path) if path else None
        subject = "" if key is None else key if value is _MISSING else f"{key} = {_render(value)}"
        message = _one_line(f"{where}: {subject}: {detail}" if subject else f"{where}: {detail}")
        raise ConfigError(message, source=self.source, key=key, line=line)

    def fail_val(self, val: _Val, detail: str) -> NoReturn:
        assert val.origin is not None, "built-in defaults are valid"
        self.fail(val.origin, detail, val.raw)

    # --- tables and keys

    def table(self, value: object, path: KeyPath, what: str) -> dict[str, object]:
        if not isinstance(value, dict):
            self.fail(path, f"must be a table ({what})", value)
        return value

    def check_keys(self, table: Mapping[str, object], path: KeyPath, section: str) -> None:
        known = KNOWN_KEYS[section]
        for key, value in table.items():
            if key in known:
                continue
            close = difflib.get_close_matches(key.lower(), sorted(known), n=1, cutoff=0.6)
            homes = [s for s, keys in KNOWN_KEYS.items() if key in keys and s != section]
            homes.sort(key=lambda s: s == "top")  # `listen` is a table at the top and a key of [exporter]
            if close:
                hint = f"did you mean {close[0]}?"
            elif homes:
                hint = f"it belongs in {_section_title(homes[0])}"
            else:
                hint = f"known keys here: {', '.join(sorted(known))}"
            self.fail((*path, key), f"unknown key ({hint})", value)

    # --- scalar checks

    def string(self, value: object, path: KeyPath) -> str:
        if not isinstance(value, str):
            self.fail(path, "must be a string", value)
        if not value.strip():
            self.fail(path, "must not be empty", value)
        return value

    def choice(self, value: object, path: KeyPath, choices: Sequence[str]) -> str:
        if not isinstance(value, str) or value not in choices:
            self.fail(path, f"must be one of {', '.join(json.dumps(c) for c in choices)}", value)
        return value

    def boolean(self, value: object, path: KeyPath) -> bool:
        if not isinstance(value, bool):
            self.fail(path, "must be true or false", value)
        return value

    def integer(self, value: object, path: KeyPath, low: int, high: int, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(path, f"must be {what} from {low} to {high}", value)
        return value

    def port(self, value: object, path: KeyPath) -> int:
        return self.integer(value, path, 1, 65535, "a port number")

    def seconds(self, value: object, path: KeyPath) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            quoted = ' (unquoted: 5, not "5s")' if isinstance(value, str) else ""
            self.fail(path, f"must be a number of seconds{quoted}", value)
        if value <= 0:
            self.fail(path, "must be a positive number of seconds", value)
        return float(value)

    def host_name(self, value: object, path: KeyPath) -> str:
        text = self.string(value, path)
        try:
            target = parse_target(text)
        except TargetError:
            self.fail(path, "must be a host name or an IP address", value)
        if target.port is not None or target.scheme is not None:
            self.fail(path, "must be a bare host name or IP address (no port, no sip: URI)", value)
        return target.host

    def file_path(self, value: object, path: KeyPath) -> str:
        text = self.string(value, path)
        file = Path(text).expanduser()
        if not file.is_absolute() and self.base_dir is not None:
            file = self.base_dir / file
        return str(file)

    # --- module keys

    def module_value(self, key: str, value: object, path: KeyPath) -> object:
        """Validate one module key (as written in [defaults] or [modules.NAME]); return the typed value."""
        if key == "transport":
            return self.choice(value, path, ("tcp", "tls", "udp"))
        if key == "port":
            return self.port(value, path)
        if key in ("ca_file", "cert_file", "key_file"):
            return self.file_path(value, path)
        if key == "insecure":
            return self.boolean(value, path)
        if key in ("min_tls", "max_tls"):
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.fail(path, f'must be a string: quote the version, e.g. "{value}"', value)
            return self.choice(value, path, TLS_VERSIONS)
        if key == "ciphers":
            return self.string(value, path)
        if key in ("server_name", "from_domain"):
            return self.host_name(value, path)
        if key == "accept_status":
            return self.accept_status(value, path)
        if key in ("timeout", "interval"):
            return self.seconds(value, path)
        if key == "families":
            return self.families(value, path)
        if key in ("failures_before_down", "successes_before_up"):
            return self.integer(value, path, 1, _MAX_THRESHOLD, "a whole number of consecutive runs")
        if key == "preset":
            return self.choice(value, path, tuple(PRESETS))
        if key == "resolution":
            return self.choice(value, path, RESOLUTIONS)
        raise AssertionError(f"unhandled module key {key}")  # pragma: no cover

    def accept_status(self, value: object, path: KeyPath) -> frozenset[int]:
        if isinstance(value, str):
            spec = value
        elif isinstance(value, list) and value:
            for item in value:
                if isinstance(item, bool) or not isinstance(item, int | str):
                    self.fail(path, 'must be a string like "2xx" or a list of status codes', value)
            spec = ",".join(str(item) for item in value)
        else:
            self.fail(path, 'must be a string like "200,202", "2xx" or "200-299", or a list of codes', value)
        try:
            return parse_accept_status(spec)
        except ValueError as exc:
            self.fail(path, str(exc), value)

    def families(self, value: object, path: KeyPath) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            self.fail(path, 'must be a non-empty list of "ipv4" and/or "ipv6"', value)
        for item in value:
            if item not in _FAMILIES:
                self.fail(path, f'{_render(item)} is not "ipv4" or "ipv6"', value)
        if len(set(value)) != len(value):
            self.fail(path, "lists a family twice", value)
        return tuple(str(item) for item in value)


def _thresholds(vals: Mapping[str, _Val]) -> Thresholds:
    """A module's up/down thresholds: its `preset`'s, with `failures_before_down` / `successes_before_up`
    on top where they are written in the same table as the preset or a more specific one."""
    preset = vals.get("preset")
    base = PRESETS[str(preset.value)] if preset is not None else DEFAULT_THRESHOLDS
    counts = {
        "failures_before_down": base.failures_before_down,
        "successes_before_up": base.successes_before_up,
    }
    for key in counts:
        val = vals.get(key)
        if val is not None and (preset is None or _rank(val.origin) >= _rank(preset.origin)):
            counts[key] = int(str(val.value))
    return Thresholds(**counts)


def _section_title(section: str) -> str:
    return {"top": "the top level", "targets": "[[targets]]", "rtp": "[[rtp]]", "listen": "[[listen]]"}.get(
        section, f"[{section}]"
    )


class _Builder:
    """Turns the parsed TOML into a Config; one instance per parse."""

    def __init__(self, reader: _Reader, data: dict[str, object], check_files: bool) -> None:
        self.r = reader
        self.data = data
        self.check_files = check_files
        self.modules: dict[str, ModuleConfig] = {}
        self.module_vals: dict[str, dict[str, _Val]] = {}
        self.user_modules: list[str] = []
        self.used: set[str] = set()
        self._checked_tls: set[TLSClientConfig] = set()

    def build(self) -> Config:
        r = self.r
        r.check_keys(self.data, (), "top")
        defaults = self._module_layer(self.data.get("defaults", {}), ("defaults",), "[defaults]")
        self._modules(defaults)
        probes = self._targets()
        for name in self.modules:
            if name in self.user_modules or name in self.used:
                self._check_tls(name)
        rtp = self._rtp()
        return Config(
            source=r.source,
            modules=MappingProxyType(dict(self.modules)),
            probes=tuple(probes),
            exporter=self._exporter(),
            scheduler=self._scheduler(),
            log=self._log(),
            rtp=tuple(rtp),
            listen=tuple(self._listen()),
            dns=self._dns(),
        )

    # --- modules

    def _module_layer(self, raw: object, path: KeyPath, what: str) -> dict[str, _Val]:
        table = self.r.table(raw, path, what)
        self.r.check_keys(table, path, "defaults" if path == ("defaults",) else "modules.NAME")
        return {
            key: _Val(self.r.module_value(key, value, (*path, key)), value, (*path, key))
            for key, value in table.items()
        }

    def _modules(self, defaults: dict[str, _Val]) -> None:
        r = self.r
        builtin = {
            "transport": _Val("tcp", "tcp", None),
            "insecure": _Val(False, False, None),
            "min_tls": _Val("1.2", "1.2", None),
            "accept_status": _Val(DEFAULT_ACCEPT, None, None),
            "timeout": _Val(DEFAULT_TIMEOUT, DEFAULT_TIMEOUT, None),
            "interval": _Val(DEFAULT_INTERVAL, DEFAULT_INTERVAL, None),
            "families": _Val(_FAMILIES, list(_FAMILIES), None),
        }
        tables = r.table(self.data.get("modules", {}), ("modules",), "[modules.NAME] tables")
        layers: dict[str, dict[str, _Val]] = {
            name: {"transport": _Val(transport, transport, None)}
            for name, transport in BUILTIN_MODULES.items()
        }
        for name, raw in tables.items():
            if not _MODULE_NAME.fullmatch(name):
                r.fail(
                    ("modules", name),
                    "a module name must start with a letter or _ and hold only letters, digits, _ and -",
                )
            layers[name] = self._module_layer(raw, ("modules", name), f"[modules.{name}]")
            self.user_modules.append(name)
        for name, own in layers.items():
            inherited = defaults
            if name not in self.user_modules and "resolution" in defaults:
                # A built-in module (sip_tcp, sip_tls, sip_udp) always resolves A/AAAA; [defaults]'s
                # resolution is for the user's modules (docs/configuration.md says so).
                inherited = {k: v for k, v in defaults.items() if k != "resolution"}
            merged = {**builtin, **inherited, **own}
            self.module_vals[name] = merged
            self.modules[name] = self._module(name, merged, own)

    def _module(self, name: str, vals: dict[str, _Val], own: dict[str, _Val]) -> ModuleConfig:
        r = self.r
        value = vals["transport"].value
        transport: Literal["tcp", "tls", "udp"] = (
            "tls" if value == "tls" else "udp" if value == "udp" else "tcp"
        )
        if transport != "tls":
            for key in sorted(TLS_ONLY_KEYS & own.keys()):
                r.fail_val(
                    own[key], f'only applies to transport "tls" (this module\'s transport is "{transport}")'
                )
        self._check_timing(vals["timeout"], vals["interval"])

        def opt(key: str) -> str | None:
            val = vals.get(key)
            return None if val is None else str(val.value)

        tls: TLSClientConfig | None = None
        if transport == "tls":
            low, high = vals["min_tls"], vals.get("max_tls")
            if high is not None and TLS_VERSIONS.index(str(high.value)) < TLS_VERSIONS.index(str(low.value)):
                if _rank(low.origin) >= _rank(high.origin):
                    r.fail_val(low, f"is above max_tls ({_render(high.raw)})")
                r.fail_val(high, f"is below min_tls ({_render(low.raw)})")
            if "key_file" in vals and "cert_file" not in vals:
                r.fail_val(vals["key_file"], "needs cert_file: key_file is the private key of cert_file")
            tls = TLSClientConfig(
                ca_file=opt("ca_file"),
                cert_file=opt("cert_file"),
                key_file=opt("key_file"),
                insecure=bool(vals["insecure"].value),
                min_version=str(low.value),
                max_version=opt("max_tls"),
                ciphers=opt("ciphers"),
            )
        accept = vals["accept_status"].value
        families = vals["families"].value
        port = vals.get("port")
        assert isinstance(accept, frozenset) and isinstance(families, tuple)
        return ModuleConfig(
            name=name,
            transport=transport,
            port=None if port is None else int(str(port.value)),
            tls=tls,
            server_name=opt("server_name") if transport == "tls" else None,
            accept_status=accept,
            timeout=float(str(vals["timeout"].value)),
            interval=float(str(vals["interval"].value)),
            families=tuple(str(f) for f in families),
            from_domain=opt("from_domain"),
            thresholds=_thresholds(vals),
            preset=str(vals["preset"].value) if "preset" in vals else "none",
            resolution="rfc3263" if "resolution" in vals and vals["resolution"].value == "rfc3263" else "a",
        )

    def _check_timing(self, timeout: _Val, interval: _Val) -> None:
        t, i = float(str(timeout.value)), float(str(interval.value))
        if t < i:
            return
        if _rank(timeout.origin) >= _rank(interval.origin):
            self.r.fail_val(timeout, f"must be less than interval ({_render(interval.raw)}{_from(interval)})")
        self.r.fail_val(interval, f"must be greater than timeout ({_render(timeout.raw)}{_from(timeout)})")

    def _check_tls(self, name: str) -> None:
        module = self.modules[name]
        if module.tls is None:
            return
        vals = self.module_vals[name]
        bare = TLSClientConfig(
            insecure=module.tls.insecure,
            min_version=module.tls.min_version,
            max_version=module.tls.max_version,
            ciphers=module.tls.ciphers,
        )
        for config in (bare, module.tls) if self.check_files else (bare,):
            if config in self._checked_tls:
                continue
            try:
                make_client_context(config)
            except TLSConfigError as exc:
                message = _one_line(str(exc))
                self.r.fail_val(_blame_tls(vals, message), message)
            self._checked_tls.add(config)

    # --- targets

    def _targets(self) -> list[ProbeConfig]:
        r = self.r
        raw = self.data.get("targets", [])
        if not isinstance(raw, list):
            r.fail(("targets",), "must be an array of tables ([[targets]])", raw)
        probes: list[ProbeConfig] = []
        ids: dict[str, KeyPath] = {}
        names: dict[str, KeyPath] = {}
        for index, entry in enumerate(raw):
            path: KeyPath = ("targets", index)
            table = r.table(entry, path, "[[targets]]")
            r.check_keys(table, path, "targets")
            for probe in self._target(table, path):
                if probe.id in ids:
                    r.fail(
                        (*path, "host"),
                        f"probe {json.dumps(probe.id)} is defined twice"
                        f" (also by {_format_path(ids[probe.id])})",
                        table.get("host"),
                    )
                if probe.name in names:
                    r.fail(
                        (*path, "name" if "name" in table else "host"),
                        f"probe name {json.dumps(probe.name)} is used twice"
                        f" (also by {_format_path(names[probe.name])}); give one of the targets another name",
                        table.get("name", table.get("host")),
                    )
                ids[probe.id] = names[probe.name] = path
                probes.append(probe)
        return probes

    def _target(self, table: dict[str, object], path: KeyPath) -> list[ProbeConfig]:
        r = self.r
        if "host" not in table:
            default_hosts = self._profile_hosts(table, path)
            if not default_hosts:
                r.fail(path, "host is required (a host name, an IP address or a list of them)")
            table = {**table, "host": list(default_hosts)}
        raw_hosts = table["host"]
        host_list = raw_hosts if isinstance(raw_hosts, list) else [raw_hosts]
        if not host_list:
            r.fail((*path, "host"), "must name at least one host", raw_hosts)
        hosts: list[str] = []
        for item in host_list:
            if not isinstance(item, str):
                r.fail((*path, "host"), "must be a string or a list of strings", raw_hosts)
            host = r.host_name(item, (*path, "host"))
            if host in hosts:
                r.fail((*path, "host"), f"lists {json.dumps(host)} twice", raw_hosts)
            hosts.append(host)
        name: str | None = None
        if "name" in table:
            name = r.string(table["name"], (*path, "name"))
            if any(ord(c) < 32 or ord(c) == 127 for c in name):
                r.fail((*path, "name"), "must be one line without control characters", name)
            if len(hosts) > 1:
                r.fail((*path, "name"), f"a name needs a single host (host lists {len(hosts)})", name)
        labels = self._labels(table.get("labels", {}), (*path, "labels"))
        overrides: dict[str, _Val] = {
            key: _Val(r.module_value(key, table[key], (*path, key)), table[key], (*path, key))
            for key in ("timeout", "interval", "server_name")
            if key in table
        }
        has_module, has_profile = "module" in table, "profile" in table
        if has_module == has_profile:
            what = "both" if has_module else "neither"
            r.fail(path, f'a target needs either module = "NAME" or profile = "...", not {what}')
        out: list[ProbeConfig] = []
        if has_module:
            for key in _PROFILE_ONLY_KEYS:
                if key in table:
                    r.fail((*path, key), "only applies to a target with a profile", table[key])
            module = self._module_ref(table, path, "module", None)
            port = r.port(table["port"], (*path, "port")) if "port" in table else None
            given = port is not None or module.port is not None
            for host in hosts:
                probe = self._probe(host, name, module, port or module.default_port, "custom", True, None)
                if not given and module.resolution == "rfc3263":
                    # NAPTR/SRV choose the ports: the probe's name and id name none ("host/tcp").
                    probe = replace(
                        probe,
                        id=f"{host}|custom|{module.transport}|naptr|{module.name}",
                        name=probe.name.rsplit(":", 1)[0] + f"/{module.transport}",
                        spec=replace(probe.spec, port_given=False),
                    )
                out.append(probe)
        else:
            if "port" in table:
                r.fail(
                    (*path, "port"),
                    "a profile decides the ports: use call_router_tcp_port / call_router_tls_port"
                    if table.get("profile") in EXCHANGE_PROFILES
                    else "a profile decides the ports: use port_map to reach a listener at another port",
                    table["port"],
                )
            profile = r.choice(table["profile"], (*path, "profile"), PROFILES)
            if get_profile(profile).exchange:
                for key in _SBC_ONLY_KEYS:
                    if key in table:
                        r.fail((*path, key), f"does not apply to profile {json.dumps(profile)}", table[key])
                mode = r.choice(table.get("um_mode", "dual"), (*path, "um_mode"), UM_MODES)
                roles = self._roles(table, path)
                ports = {"call_router_tcp_port": 5060, "call_router_tls_port": 5061}
                for key in ports:
                    if key in table:
                        ports[key] = r.port(table[key], (*path, key))
                        if "call_router" not in roles:
                            r.fail(
                                (*path, key), "has no effect: roles does not include call_router", table[key]
                            )
                listeners = expand_profile(
                    profile,
                    mode,
                    roles=roles,
                    call_router_tcp_port=ports["call_router_tcp_port"],
                    call_router_tls_port=ports["call_router_tls_port"],
                )
                sbc_fqdn: str | None = None
                sbc_port: int | None = None
            else:
                listeners, sbc_fqdn, sbc_port = self._sbc_profile(table, path, profile)
            if "port_map" in table:
                listeners = self._port_map(table["port_map"], (*path, "port_map"), listeners)
            tcp_module: ModuleConfig | None = None
            tls_module: ModuleConfig | None = None
            udp_module: ModuleConfig | None = None
            if any(spec.transport == "udp" for spec in listeners) or "udp_module" in table:
                udp_module = self._module_ref(table, path, "udp_module", "udp")
            if any(spec.transport == "tcp" for spec in listeners) or "tcp_module" in table:
                tcp_module = self._module_ref(table, path, "tcp_module", "tcp")
            if any(spec.transport == "tls" for spec in listeners) or "tls_module" in table:
                tls_module = self._module_ref(table, path, "tls_module", "tls")
            no_cert = tls_module is not None and (tls_module.tls is None or tls_module.tls.cert_file is None)
            profile_data = get_profile(profile)
            policy_needs_cert = profile_data.policy is not None and profile_data.policy.client_cert_required
            if (profile_data.requires_client_cert or policy_needs_cert) and no_cert:
                assert tls_module is not None
                why = (
                    "the far end only talks mutual TLS"
                    if profile_data.requires_client_cert
                    else "its policy judges the client certificate of every TLS listener"
                )
                r.fail(
                    (*path, "tls_module" if "tls_module" in table else "profile"),
                    f"profile {json.dumps(profile)} needs a TLS module with cert_file: {why}"
                    f" (module {json.dumps(tls_module.name)} has no client certificate)",
                    table.get("tls_module", profile),
                )
            for host in hosts:
                for spec in listeners:
                    chosen = {"tcp": tcp_module, "tls": tls_module, "udp": udp_module}[spec.transport]
                    assert chosen is not None
                    probe = self._probe(
                        host, name, chosen, spec.port, spec.listener, spec.required, spec.group
                    )
                    if not get_profile(profile).exchange:
                        shape = request_shape(profile, spec.transport, sbc_fqdn=sbc_fqdn, sbc_port=sbc_port)
                        probe = replace(
                            probe,
                            profile=profile,
                            spec=replace(
                                probe.spec,
                                uri_scheme=shape.uri_scheme,
                                from_domain=shape.from_domain or probe.spec.from_domain,
                                contact_host=shape.contact_host,
                                contact_port=shape.contact_port,
                            ),
                        )
                    out.append(probe)
        if "server_name" in overrides and all(probe.spec.transport != "tls" for probe in out):
            r.fail_val(overrides["server_name"], "only applies to TLS listeners (this target has none)")
        return [self._finish(probe, overrides, labels) for probe in out]

    def _profile_hosts(self, table: dict[str, object], path: KeyPath) -> tuple[str, ...]:
        """A profile's own hosts when a target names none (Teams Direct Routing: Microsoft's SIP proxies of
        the `variant`), else ()."""
        profile = table.get("profile")
        if not isinstance(profile, str) or profile not in PROFILES or "module" in table:
            return ()
        data = get_profile(profile)
        variant = table.get("variant", data.default_variant)
        if not data.hosts:
            return ()
        return data.default_hosts(self.r.choice(variant, (*path, "variant"), data.variants))

    def _sbc_profile(
        self, table: dict[str, object], path: KeyPath, profile: str
    ) -> tuple[list[ListenerSpec], str | None, int | None]:
        """The listeners and SBC identity of a profile beyond Exchange (teams-direct-routing, ...)."""
        r = self.r
        data = get_profile(profile)
        for key in _EXCHANGE_ONLY_KEYS:
            if key in table:
                r.fail(
                    (*path, key),
                    f"is Exchange's: it does not apply to profile {json.dumps(profile)}",
                    table[key],
                )
        if "variant" in table:
            if not data.hosts:
                r.fail(
                    (*path, "variant"), f"does not apply to profile {json.dumps(profile)}", table["variant"]
                )
            r.choice(table["variant"], (*path, "variant"), data.variants)
        sbc_fqdn = r.host_name(table["sbc_fqdn"], (*path, "sbc_fqdn")) if "sbc_fqdn" in table else None
        if data.requires_sbc_fqdn and sbc_fqdn is None:
            r.fail(
                (*path, "profile"),
                f'profile {json.dumps(profile)} needs sbc_fqdn = "SBC FQDN": it goes in From and Contact',
                profile,
            )
        sbc_port: int | None = None
        if "sbc_port" in table:
            if sbc_fqdn is None:
                r.fail((*path, "sbc_port"), "has no effect without sbc_fqdn", table["sbc_port"])
            sbc_port = r.port(table["sbc_port"], (*path, "sbc_port"))
        transports: tuple[str, ...] | None = None
        if "transports" in table:
            raw = table["transports"]
            known = data.transports
            if not isinstance(raw, list) or not raw:
                r.fail((*path, "transports"), f"must be a non-empty list of {', '.join(known)}", raw)
            for item in raw:
                if item not in known:
                    r.fail((*path, "transports"), f"{_render(item)} is not one of {', '.join(known)}", raw)
            if len(set(raw)) != len(raw):
                r.fail((*path, "transports"), "lists a transport twice", raw)
            transports = tuple(str(item) for item in raw)
        listeners = expand_profile(profile, transports=transports)
        if not listeners:
            r.fail(
                (*path, "transports"),
                "leaves no listener umprobe can probe",
                table.get("transports"),
            )
        return listeners, sbc_fqdn, sbc_port

    def _port_map(self, raw: object, path: KeyPath, listeners: list[ListenerSpec]) -> list[ListenerSpec]:
        """`port_map = { K = V, ... }`: the profile's listener on port K is reached at port V (same listener
        name, required flag and group). Keys must be ports of the expanded profile; values distinct."""
        r = self.r
        table = r.table(raw, path, "port_map = { 5062 = 41003, ... }: profile port = port it is reached at")
        if not table:
            r.fail(path, "is empty: it has no effect", raw)
        ports = sorted({spec.port for spec in listeners})
        mapping: dict[int, int] = {}
        sources: dict[int, int] = {}
        for key, value in table.items():
            where = (*path, key)
            if not key.isdigit() or int(key) not in ports:
                r.fail(
                    where,
                    f"{key if key.isdigit() else json.dumps(key)} is not a port of this profile's listeners"
                    f" ({', '.join(str(p) for p in ports)})",
                    value,
                )
            to = r.port(value, where)
            if to in sources:
                r.fail(where, f"port {to} is also where {sources[to]} is reached: each needs its own", value)
            mapping[int(key)] = to
            sources[to] = int(key)
        return [replace(spec, port=mapping.get(spec.port, spec.port)) for spec in listeners]

    def _roles(self, table: dict[str, object], path: KeyPath) -> tuple[str, ...]:
        r = self.r
        if "roles" not in table:
            return PROFILE_ROLES
        raw = table["roles"]
        if not isinstance(raw, list) or not raw:
            r.fail((*path, "roles"), f"must be a non-empty list of {', '.join(PROFILE_ROLES)}", raw)
        for item in raw:
            if item not in PROFILE_ROLES:
                r.fail((*path, "roles"), f"{_render(item)} is not one of {', '.join(PROFILE_ROLES)}", raw)
        if len(set(raw)) != len(raw):
            r.fail((*path, "roles"), "lists a role twice", raw)
        return tuple(role for role in PROFILE_ROLES if role in raw)

    def _module_ref(
        self, table: dict[str, object], path: KeyPath, key: str, transport: str | None
    ) -> ModuleConfig:
        r = self.r
        if key not in table:
            if transport in ("tcp", "udp"):
                return self._use(f"sip_{transport}")
            # the TLS listeners of a profile: the user's one TLS module, else the built-in sip_tls
            tls_modules = [n for n in self.user_modules if self.modules[n].transport == "tls"]
            if len(tls_modules) > 1:
                r.fail(
                    path,
                    f"tls_module is required: several TLS modules are defined ({', '.join(tls_modules)})",
                )
            return self._use(tls_modules[0] if tls_modules else "sip_tls")
        value = r.string(table[key], (*path, key))
        if value not in self.modules:
            close = difflib.get_close_matches(value, sorted(self.modules), n=1, cutoff=0.6)
            hint = f"; did you mean {json.dumps(close[0])}?" if close else ""
            r.fail((*path, key), f"unknown module{hint} (defined: {', '.join(sorted(self.modules))})", value)
        module = self.modules[value]
        if transport is not None and module.transport != transport:
            r.fail(
                (*path, key),
                f'must name a module with transport "{transport}"'
                f' (module {json.dumps(value)} is "{module.transport}")',
                value,
            )
        return self._use(value)

    def _use(self, name: str) -> ModuleConfig:
        self.used.add(name)
        return self.modules[name]

    def _labels(self, raw: object, path: KeyPath) -> tuple[tuple[str, str], ...]:
        r = self.r
        table = r.table(raw, path, 'labels = { name = "value", ... }')
        out: list[tuple[str, str]] = []
        for key, value in table.items():
            where = (*path, key)
            if not _LABEL_NAME.fullmatch(key):
                r.fail(where, "bad label name: must match [a-zA-Z_][a-zA-Z0-9_]*", value)
            if key.startswith("__"):
                r.fail(where, "bad label name: names starting with __ are reserved by Prometheus", value)
            if key in BUILTIN_LABELS:
                r.fail(
                    where,
                    f"label name {json.dumps(key)} is set by umprobe itself"
                    f" (built-in labels: {', '.join(sorted(BUILTIN_LABELS))})",
                    value,
                )
            out.append((key, r.string(value, where)))
        return tuple(sorted(out))

    def _probe(
        self,
        host: str,
        name: str | None,
        module: ModuleConfig,
        port: int,
        listener: str,
        required: bool,
        group: str | None,
    ) -> ProbeConfig:
        shown = name if name is not None else host
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        spec = module.spec_for(host, port, listener=listener)
        return ProbeConfig(
            id=f"{host}|{listener}|{module.transport}|{port}|{module.name}",
            name=f"{shown}:{port}/{module.transport}",
            target=host,
            module=module.name,
            spec=spec,
            interval=module.interval,
            timeout=module.timeout,
            labels=(),
            required=required,
            group=group,
        )

    def _finish(
        self, probe: ProbeConfig, overrides: dict[str, _Val], labels: tuple[tuple[str, str], ...]
    ) -> ProbeConfig:
        vals = self.module_vals[probe.module]
        timeout = overrides.get("timeout", vals["timeout"])
        interval = overrides.get("interval", vals["interval"])
        if "timeout" in overrides or "interval" in overrides:
            self._check_timing(timeout, interval)
        spec = probe.spec
        server_name = overrides.get("server_name")
        if server_name is not None and spec.transport == "tls":
            spec = replace(spec, server_name=str(server_name.value))
        return ProbeConfig(
            id=probe.id,
            name=probe.name,
            target=probe.target,
            module=probe.module,
            spec=spec,
            interval=float(str(interval.value)),
            timeout=float(str(timeout.value)),
            labels=labels,
            required=probe.required,
            group=probe.group,
            profile=probe.profile,
            thresholds=self.modules[probe.module].thresholds,
        )

    # --- [[rtp]]

    def _rtp(self) -> list[RtpProbeConfig]:
        r = self.r
        raw = self.data.get("rtp", [])
        if not isinstance(raw, list):
            r.fail(("rtp",), "must be an array of tables ([[rtp]])", raw)
        out: list[RtpProbeConfig] = []
        names: dict[str, KeyPath] = {}
        for index, entry in enumerate(raw):
            path: KeyPath = ("rtp", index)
            table = r.table(entry, path, "[[rtp]]")
            if "host" in table:
                r.fail(
                    (*path, "host"),
                    'unknown key: an [[rtp]] entry names its echo peer with peer = "HOST:PORT"',
                    table["host"],
                )
            r.check_keys(table, path, "rtp")
            probe = self._rtp_entry(table, path)
            if probe.name in names:
                key = "name" if "name" in table else "peer"
                r.fail(
                    (*path, key),
                    f"peer name {json.dumps(probe.name)} is used twice"
                    f" (also by {_format_path(names[probe.name])}); give one of them another name",
                    table[key],
                )
            names[probe.name] = path
            out.append(probe)
        return out

    def _rtp_entry(self, table: dict[str, object], path: KeyPath) -> RtpProbeConfig:
        r = self.r
        plain = r.choice(table.get("mode", "peer"), (*path, "mode"), ("peer", "plain-echo")) == "plain-echo"
        if "peer" not in table:
            r.fail(
                path,
                'peer is required: the echo peer\'s control address, peer = "HOST:PORT"'
                " (`umprobe peer --listen`)",
            )
        where: KeyPath = (*path, "peer")
        try:
            target = parse_target(r.string(table["peer"], where))
        except TargetError:
            target = None
        if target is None or target.scheme is not None:
            r.fail(
                where,
                'must be "HOST:PORT": a host name or IP address and the peer\'s control port',
                table["peer"],
            )
        ports: tuple[int, ...] = ()
        if plain:
            if target.port is not None:
                r.fail(
                    where,
                    'mode = "plain-echo" has no control port: give the host alone, and ports',
                    table["peer"],
                )
            for key in ("secret_file", "samples", "media_host", "tls", *_RTP_TLS_KEYS):
                if key in table:
                    r.fail(
                        (*path, key),
                        'does not apply to mode = "plain-echo" (no control channel, no authentication)',
                        table[key],
                    )
            if "ports" not in table:
                r.fail(path, 'mode = "plain-echo" needs ports = [...]: the UDP echo ports to probe')
            ports = self._rtp_ports(table["ports"], (*path, "ports"))
        else:
            if target.port is None:
                r.fail(where, 'needs the control port: "HOST:PORT" (`umprobe peer --listen`)', table["peer"])
            if "ports" in table:
                r.fail(
                    (*path, "ports"),
                    'only applies to mode = "plain-echo"; a peer is sampled over range',
                    table["ports"],
                )
            if "secret_file" not in table:
                r.fail(
                    path,
                    "secret_file is required: the file with the peer's shared secret (at least 16 bytes)",
                )
        name = target.host
        if "name" in table:
            name = r.string(table["name"], (*path, "name"))
            if any(ord(c) < 32 or ord(c) == 127 for c in name):
                r.fail((*path, "name"), "must be one line without control characters", name)
        labels = self._labels(table.get("labels", {}), (*path, "labels"))
        rtp_range = self._rtp_range(table, path, ports)
        defaults = _RTP_DEFAULTS
        samples = len(ports) if plain else defaults.samples
        if "samples" in table:
            samples = r.integer(table["samples"], (*path, "samples"), 1, 256, "a whole number")
        packets = defaults.packets
        if "packets" in table:
            packets = r.integer(table["packets"], (*path, "packets"), 1, 3000, "a whole number")
        concurrency = defaults.concurrency
        if "concurrency" in table:
            concurrency = r.integer(table["concurrency"], (*path, "concurrency"), 1, 64, "a whole number")
        media_host = (
            r.host_name(table["media_host"], (*path, "media_host")) if "media_host" in table else None
        )
        tls, server_name = self._rtp_tls(table, path)
        secret, secret_file = _UNREAD_SECRET, None
        if not plain:
            where = (*path, "secret_file")
            secret_file = r.file_path(table["secret_file"], where)
            if self.check_files:
                try:
                    # No stderr warning for a world-readable file here: the daemon logs, it does not print.
                    secret = read_secret(secret_file, what="secret file", warn=False)
                except UserError as exc:
                    r.fail(where, str(exc), table["secret_file"])
        try:
            spec = RtpProbeSpec(
                host=target.host,
                port=target.port or 0,
                secret=b"" if plain else secret,
                tls=tls,
                server_name=server_name,
                media_host=media_host,
                rtp_range=rtp_range,
                samples=samples,
                packets=packets,
                mode="plain-echo" if plain else "peer",
                ports=ports,
                concurrency=concurrency,
                rtcp=not plain,  # a plain echo has no RTCP counterpart to answer
            )
        except ValueError as exc:  # pragma: no cover - every value was checked above
            r.fail(path, str(exc))
        interval, timeout = self._rtp_timing(table, path, spec)
        return RtpProbeConfig(
            id=f"rtp|{spec.host}|{spec.port}|{spec.mode}|{name}",
            name=name,
            target=spec.host,
            spec=spec,
            interval=interval,
            timeout=timeout,
            labels=labels,
            secret_file=secret_file,
        )

    def _rtp_ports(self, raw: object, path: KeyPath) -> tuple[int, ...]:
        r = self.r
        if not isinstance(raw, list) or not raw:
            r.fail(path, "must be a non-empty list of UDP port numbers", raw)
        for item in raw:
            if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 65535:
                r.fail(path, f"{_render(item)} is not a port number from 1 to 65535", raw)
        if len(set(raw)) != len(raw):
            r.fail(path, "lists a port twice", raw)
        return tuple(int(item) for item in raw)

    def _rtp_range(self, table: dict[str, object], path: KeyPath, ports: tuple[int, ...]) -> tuple[int, int]:
        """`range = "LO-HI"`; without it 1024-65535, or in plain-echo mode the span of `ports`."""
        r = self.r
        if "range" not in table:
            return (min(ports), max(ports)) if ports else _RTP_DEFAULT_RANGE
        raw = table["range"]
        where: KeyPath = (*path, "range")
        text = r.string(raw, where)
        lo_text, sep, hi_text = text.partition("-")
        if not sep or not lo_text.strip().isdigit() or not hi_text.strip().isdigit():
            r.fail(where, 'must be "LO-HI", e.g. "1024-65535" (MinimumRtpPort-MaximumRtpPort)', raw)
        lo, hi = int(lo_text), int(hi_text)
        if ports:  # plain-echo: any ports, but the list must lie in the range
            if not 1 <= lo <= hi <= 65535:
                r.fail(where, "must be LO-HI with 1 <= LO <= HI <= 65535", raw)
            outside = [p for p in ports if not lo <= p <= hi]
            if outside:
                r.fail(where, f"does not hold the ports {', '.join(str(p) for p in outside[:5])}", raw)
            return lo, hi
        if not MIN_RTP_PORT <= lo <= hi <= MAX_RTP_PORT:
            r.fail(where, f"must be LO-HI with {MIN_RTP_PORT} <= LO <= HI <= {MAX_RTP_PORT}", raw)
        try:
            even_ports(lo, hi)
        except ValueError:
            r.fail(where, "holds no even port: RTP uses even ports (RTCP the odd one above)", raw)
        return lo, hi

    def _rtp_tls(self, table: dict[str, object], path: KeyPath) -> tuple[TLSClientConfig | None, str | None]:
        """The control channel's TLS: `tls = true` and its files, loaded like a module's when files are
        checked."""
        r = self.r
        use_tls = r.boolean(table["tls"], (*path, "tls")) if "tls" in table else False
        if not use_tls:
            for key in _RTP_TLS_KEYS:
                if key in table:
                    r.fail(
                        (*path, key), "only applies with tls = true (TLS on the control channel)", table[key]
                    )
            return None, None
        files = {
            key: r.file_path(table[key], (*path, key))
            for key in ("ca_file", "cert_file", "key_file")
            if key in table
        }
        if "key_file" in files and "cert_file" not in files:
            r.fail(
                (*path, "key_file"),
                "needs cert_file: key_file is the private key of cert_file",
                table["key_file"],
            )
        insecure = r.boolean(table["insecure"], (*path, "insecure")) if "insecure" in table else False
        server_name = (
            r.host_name(table["server_name"], (*path, "server_name")) if "server_name" in table else None
        )
        tls = TLSClientConfig(
            ca_file=files.get("ca_file"),
            cert_file=files.get("cert_file"),
            key_file=files.get("key_file"),
            insecure=insecure,
        )
        if self.check_files and tls not in self._checked_tls:
            try:
                make_client_context(tls)
            except TLSConfigError as exc:
                message = _one_line(str(exc))
                named = [(message.find(path_), key) for key, path_ in files.items() if path_ in message]
                key = min(named)[1] if named else "tls"
                r.fail((*path, key), message, table[key])
            self._checked_tls.add(tls)
        return tls, server_name

    def _rtp_timing(self, table: dict[str, object], path: KeyPath, spec: RtpProbeSpec) -> tuple[float, float]:
        """interval (default 60 s) and timeout, held against what one cycle is estimated to take.

        Without `timeout`: 1.5 x the estimate + 2 s, rounded up (what `umprobe rtp` uses), but at most 90 % of
        the interval; an interval too short for even the estimate is an error."""
        r = self.r
        interval = RTP_DEFAULT_INTERVAL
        if "interval" in table:
            interval = r.seconds(table["interval"], (*path, "interval"))
        estimate = estimate_seconds(spec)
        what = (
            f"{len(spec.ports)} port(s)" if spec.mode == "plain-echo" else f"samples = {spec.samples}"
        ) + f", packets = {spec.packets}, concurrency = {spec.concurrency}"
        interval_text = f"{interval:g} s" + ("" if "interval" in table else ", the default")
        if "timeout" in table:
            where: KeyPath = (*path, "timeout")
            timeout = r.seconds(table["timeout"], where)
            if timeout < estimate:
                r.fail(
                    where,
                    f"is shorter than one cycle is estimated to take ({estimate:.1f} s for {what})"
                    "; raise timeout, or lower samples or packets",
                    table["timeout"],
                )
            if timeout >= interval:
                r.fail(where, f"must be less than interval ({interval_text})", table["timeout"])
            return interval, timeout
        timeout = min(float(math.ceil(1.5 * estimate + 2)), 0.9 * interval)
        if timeout < estimate:
            r.fail(
                (*path, "interval") if "interval" in table else path,
                f"one cycle is estimated to take {estimate:.1f} s ({what}): too long for interval"
                f" ({interval_text}); raise interval, or lower samples or packets",
                *((table["interval"],) if "interval" in table else ()),
            )
        return interval, timeout

    # --- [[listen]]

    def _listen(self) -> list[ListenConfig]:
        r = self.r
        raw = self.data.get("listen", [])
        if not isinstance(raw, list):
            r.fail(("listen",), "must be an array of tables ([[listen]])", raw)
        out: list[ListenConfig] = []
        seen: dict[str, KeyPath] = {}
        for index, entry in enumerate(raw):
            path: KeyPath = ("listen", index)
            table = r.table(entry, path, "[[listen]]")
            r.check_keys(table, path, "listen")
            listen = self._listen_entry(table, path)
            for what, value in (("address", listen.id), ("name", listen.name)):
                key = f"{what}|{value}"
                if key in seen:
                    r.fail(
                        (*path, what),
                        f"is used twice (also by {_format_path(seen[key])})",
                        table.get(what, listen.name),
                    )
                seen[key] = path
            out.append(listen)
        return out

    def _listen_entry(self, table: dict[str, object], path: KeyPath) -> ListenConfig:
        r = self.r
        transport: Literal["tcp", "tls"] = "tcp"
        if (
            "transport" in table
            and r.choice(table["transport"], (*path, "transport"), ("tcp", "tls")) == "tls"
        ):
            transport = "tls"
        if "address" not in table:
            r.fail(path, 'address is required: where to answer OPTIONS, address = "HOST:PORT"')
        address = r.string(table["address"], (*path, "address"))
        if not _valid_listen(address):
            r.fail((*path, "address"), 'must be "HOST:PORT", e.g. "0.0.0.0:5061" or "[::]:5061"', address)
        host_text, _, port_text = address.rpartition(":")
        host = host_text[1:-1] if host_text.startswith("[") else host_text
        name = f"{transport}:{address}"
        if "name" in table:
            name = r.string(table["name"], (*path, "name"))
            if any(ord(c) < 32 or ord(c) == 127 for c in name):
                r.fail((*path, "name"), "must be one line without control characters", name)
        files: dict[str, str] = {}
        require = False
        if transport == "tcp":
            for key in _LISTEN_TLS_KEYS:
                if key in table:
                    r.fail((*path, key), 'only applies to transport = "tls"', table[key])
        else:
            for key in ("cert_file", "key_file"):
                if key not in table:
                    r.fail(path, 'transport = "tls" needs cert_file and key_file (our server certificate)')
            files = {
                key: r.file_path(table[key], (*path, key))
                for key in ("cert_file", "key_file", "ca_file")
                if key in table
            }
            if "require_client_cert" in table:
                require = r.boolean(table["require_client_cert"], (*path, "require_client_cert"))
                if require and "ca_file" not in files:
                    r.fail(
                        (*path, "require_client_cert"),
                        "needs ca_file: the CA that client certificates must chain to",
                        table["require_client_cert"],
                    )
            if self.check_files:
                try:
                    make_server_context(
                        cert_file=files["cert_file"],
                        key_file=files["key_file"],
                        ca_file=files.get("ca_file"),
                        require_client_cert=require,
                    )
                except TLSConfigError as exc:
                    message = _one_line(str(exc))
                    named = [(message.find(p), k) for k, p in files.items() if p in message]
                    key = min(named)[1] if named else "cert_file"
                    r.fail((*path, key), message, table[key])
        expect: list[str] = []
        if "expect" in table:
            where: KeyPath = (*path, "expect")
            raw = table["expect"]
            if not isinstance(raw, list):
                r.fail(where, "must be a list of identities: certificate FQDNs or IP addresses", raw)
            for item in raw:
                identity = normalise_identity(item) if isinstance(item, str) else None
                if identity is None:
                    r.fail(where, f"{_render(item)} is neither a host name (FQDN) nor an IP address", raw)
                if identity in expect:
                    r.fail(where, f"lists {json.dumps(identity)} twice", raw)
                expect.append(identity)
        max_identities = DEFAULT_MAX_IDENTITIES
        if "max_identities" in table:
            max_identities = r.integer(
                table["max_identities"], (*path, "max_identities"), 1, 10_000, "a whole number"
            )
        at_risk = DEFAULT_AT_RISK_AFTER
        if "at_risk_after" in table:
            at_risk = r.seconds(table["at_risk_after"], (*path, "at_risk_after"))
        demoted = DEFAULT_DEMOTED_AFTER
        if "demoted_after" in table:
            demoted = r.seconds(table["demoted_after"], (*path, "demoted_after"))
        if at_risk >= demoted:
            key = "at_risk_after" if "at_risk_after" in table else "demoted_after"
            r.fail(
                (*path, key),
                f"at_risk_after ({at_risk:g} s) must be less than demoted_after ({demoted:g} s)",
                table[key],
            )
        idle = _LISTEN_IDLE_TIMEOUT
        if "idle_timeout" in table:
            idle = r.seconds(table["idle_timeout"], (*path, "idle_timeout"))
        return ListenConfig(
            name=name,
            transport=transport,
            address=address,
            host=host or None,
            port=int(port_text),
            cert_file=files.get("cert_file"),
            key_file=files.get("key_file"),
            ca_file=files.get("ca_file"),
            require_client_cert=require,
            expect=tuple(expect),
            max_identities=max_identities,
            at_risk_after=at_risk,
            demoted_after=demoted,
            idle_timeout=idle,
        )

    # --- the small sections

    def _section(self, name: str) -> dict[str, object]:
        table = self.r.table(self.data.get(name, {}), (name,), f"[{name}]")
        self.r.check_keys(table, (name,), name)
        return table

    def _exporter(self) -> ExporterConfig:
        r = self.r
        table = self._section("exporter")
        listen = _DEFAULT_LISTEN
        if "listen" in table:
            listen = r.string(table["listen"], ("exporter", "listen"))
            if not _valid_listen(listen):
                r.fail(
                    ("exporter", "listen"), 'must be "HOST:PORT", e.g. "0.0.0.0:9874" or "[::]:9874"', listen
                )
        allow: list[str] = []
        if "probe_allow" in table:
            raw = table["probe_allow"]
            path: KeyPath = ("exporter", "probe_allow")
            if not isinstance(raw, list):
                r.fail(path, 'must be a list of "*", CIDRs or host names', raw)
            for item in raw:
                if not isinstance(item, str) or not _valid_allow(item):
                    r.fail(path, f'{_render(item)} is not "*", a CIDR (10.0.0.0/8) or a host name', raw)
                allow.append(item)
        vantage: str | None = None
        if "vantage" in table:
            vantage = r.string(table["vantage"], ("exporter", "vantage"))
            if not valid_vantage(vantage):
                r.fail(
                    ("exporter", "vantage"),
                    "must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit",
                    vantage,
                )
        return ExporterConfig(listen=listen, probe_allow=tuple(allow), vantage=vantage)

    def _dns(self) -> DnsConfig:
        """`[dns]`: nameservers or resolv_conf (not both), only where a module resolves by RFC 3263."""
        from umprobe.net.rfc3263 import DnsClient, DnsConfigError, parse_nameserver  # dnspython: lazily

        r = self.r
        table = self._section("dns")
        if not table:
            return DnsConfig()
        if not any(module.resolution == "rfc3263" for module in self.modules.values()):
            key = next(iter(table))
            r.fail(
                ("dns", key),
                'has no effect: no module has resolution = "rfc3263" (only those ask these nameservers)',
                table[key],
            )
        if "nameservers" in table and "resolv_conf" in table:
            r.fail(("dns", "resolv_conf"), "give nameservers or resolv_conf, not both", table["resolv_conf"])
        if "nameservers" in table:
            raw = table["nameservers"]
            path: KeyPath = ("dns", "nameservers")
            if not isinstance(raw, list) or not raw:
                r.fail(
                    path, 'must be a non-empty list like ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]', raw
                )
            servers: list[tuple[str, int]] = []
            for item in raw:
                if not isinstance(item, str):
                    r.fail(path, f'{_render(item)} is not a string "ADDRESS[:PORT]"', raw)
                try:
                    server = parse_nameserver(item)
                except ValueError:
                    r.fail(
                        path,
                        f'{_render(item)} is not "IP", "IPv4:PORT" or "[IPv6]:PORT" (an address, not a name)',
                        raw,
                    )
                if server in servers:
                    r.fail(path, f"lists {_render(item)} twice", raw)
                servers.append(server)
            return DnsConfig(nameservers=tuple(servers))
        resolv_conf = r.file_path(table["resolv_conf"], ("dns", "resolv_conf"))
        if self.check_files:
            try:
                DnsClient(resolv_conf=resolv_conf)
            except DnsConfigError as exc:
                r.fail(("dns", "resolv_conf"), _one_line(str(exc)), table["resolv_conf"])
        return DnsConfig(resolv_conf=resolv_conf)

    def _scheduler(self) -> SchedulerConfig:
        table = self._section("scheduler")
        if "max_concurrency" not in table:
            return SchedulerConfig()
        value = self.r.integer(
            table["max_concurrency"], ("scheduler", "max_concurrency"), 1, _MAX_CONCURRENCY, "a whole number"
        )
        return SchedulerConfig(max_concurrency=value)

    def _log(self) -> LogConfig:
        r = self.r
        table = self._section("log")
        fmt: Literal["text", "json"] = "text"
        if "format" in table and r.choice(table["format"], ("log", "format"), ("text", "json")) == "json":
            fmt = "json"
        level = "info"
        if "level" in table:
            level = r.choice(table["level"], ("log", "level"), LOG_LEVELS)
        return LogConfig(format=fmt, level=level)


def _from(val: _Val) -> str:
    return ", the built-in default" if val.origin is None else f", set at {_format_path(val.origin)}"


def _blame_tls(vals: Mapping[str, _Val], message: str) -> _Val:
    """The module value a TLSConfigError message is about: the file it names first, else the cipher string."""
    best: tuple[int, _Val] | None = None
    for key in ("key_file", "cert_file", "ca_file"):
        val = vals.get(key)
        if val is None:
            continue
        position = message.find(str(val.value))
        if position >= 0 and (best is None or position < best[0]):
            best = (position, val)
    if best is not None:
        return best[1]
    for key in ("ciphers", "max_tls", "min_tls", "cert_file"):
        val = vals.get(key)
        if val is not None and val.origin is not None:
            return val
    raise AssertionError(f"no TLS value to blame for {message!r}")  # pragma: no cover


def _valid_listen(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    if host == "":
        return True
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return bool(_HOST_NAME.fullmatch(host)) and "*" not in host


def _valid_allow(text: str) -> bool:
    if text == "*":
        return True
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return bool(_HOST_NAME.fullmatch(text))
    return True


# --------------------------------------------------------------------------------------------------------
# Entry points


def parse_config(
    text: str, *, source: str = "<string>", base_dir: Path | None = None, check_files: bool = True
) -> Config:
    """Validate probes.toml `text`; relative file paths are resolved against `base_dir` (if given).

    `source` names the file in error messages. With `check_files=False` certificate and key files are not
    opened (for checking a config on a machine that does not hold them). Raises `ConfigError`.
    """
    reader = _Reader(text, source, base_dir)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = _one_line(str(exc))
        match = _TOML_POSITION.match(message)
        line: int | None = None
        if match is not None:
            message = match["msg"]
            if match["line"]:
                line = int(match["line"])
                where = f"{source}:{line}:{match['col']}"
            else:
                where = f"{source}: at the end of the file"
        else:
            where = source
        excerpt = ""
        if line is not None and 0 < line <= len(text.splitlines()):
            source_line = text.splitlines()[line - 1].strip()
            excerpt = f" in: {source_line[:57] + '...' if len(source_line) > 60 else source_line}"
        raise ConfigError(
            f"{where}: TOML syntax error: {message}{excerpt}", source=source, line=line
        ) from None
    return _Builder(reader, data, check_files).build()


def load_config(path: str | Path, *, check_files: bool = True) -> Config:
    """Read and validate a probes.toml file. Raises `ConfigError` (also for an unreadable file)."""
    file = Path(path)
    source = str(path)
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}", source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})", source=source) from None
    return parse_config(text, source=source, base_dir=file.absolute().parent, check_files=check_files)


def _seconds_text(value: float) -> str:
    return f"{value:g}s"


def duration_text(seconds: float) -> str:
    """A span for people: "45s", "12 min", "16.8 h", "3.5 d"."""
    if seconds < 120:
        return f"{seconds:g}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 4 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _table_lines(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def _describe_rtp(entries: Sequence[RtpProbeConfig]) -> list[str]:
    header = (
        "RTP PEER",
        "CONTROL",
        "MODE",
        "RANGE",
        "PORTS/RUN",
        "PACKETS",
        "SWEEP",
        "INTERVAL",
        "TIMEOUT",
        "LABELS",
    )
    rows: list[Sequence[str]] = [header]
    for entry in entries:
        spec = entry.spec
        host = f"[{spec.host}]" if ":" in spec.host else spec.host
        if spec.mode == "plain-echo":
            control, mode = f"{host} (no control)", "plain-echo (UNAUTHENTICATED)"
        else:
            control, mode = f"{host}:{spec.port}/{'tls' if spec.tls is not None else 'tcp'}", "peer"
        per_run = len(spec.ports_for_cycle(0)) if spec.mode == "plain-echo" else spec.samples
        rows.append(
            (
                entry.name,
                control,
                mode,
                f"{spec.rtp_range[0]}-{spec.rtp_range[1]}",
                str(per_run),
                str(spec.packets),
                f"{entry.cycles_per_sweep} run{'s' if entry.cycles_per_sweep != 1 else ''}"
                f" = {duration_text(entry.sweep_seconds)}",
                _seconds_text(entry.interval),
                _seconds_text(entry.timeout),
                ",".join(f"{k}={v}" for k, v in entry.labels) or "-",
            )
        )
    return _table_lines(rows)


def _describe_listen(entries: Sequence[ListenConfig]) -> list[str]:
    rows: list[Sequence[str]] = [
        ("LISTEN", "TRANSPORT", "ADDRESS", "CLIENT CERT", "EXPECT", "AT RISK", "DEMOTED")
    ]
    for entry in entries:
        cert = (
            "-"
            if entry.transport == "tcp"
            else "required"
            if entry.require_client_cert
            else ("requested" if entry.ca_file else "no")
        )
        rows.append(
            (
                entry.name,
                entry.transport,
                entry.address,
                cert,
                ",".join(entry.expect) or "-",
                f"> {_seconds_text(entry.at_risk_after)}",
                f"> {_seconds_text(entry.demoted_after)}",
            )
        )
    return _table_lines(rows)


def describe(config: Config) -> str:
    """The expanded probe list, one line per probe (then one per [[rtp]] peer), and a summary line."""
    header = ("PROBE", "TARGET", "LISTENER", "TRANSPORT", "PORT", "MODULE", "INTERVAL", "TIMEOUT", "LABELS")
    rows: list[Sequence[str]] = [header]
    for probe in config.probes:
        listener = probe.spec.listener if probe.required else f"{probe.spec.listener} (any of {probe.group})"
        labels = ",".join(f"{k}={v}" for k, v in probe.labels) or "-"
        rows.append(
            (
                probe.name,
                probe.target,
                listener,
                probe.spec.transport,
                str(probe.spec.port) if probe.spec.port_given else "NAPTR/SRV",
                probe.module,
                _seconds_text(probe.interval),
                _seconds_text(probe.timeout),
                labels,
            )
        )
    lines = _table_lines(rows) if config.probes or not (config.rtp or config.listen) else []
    rfc3263 = [probe for probe in config.probes if probe.spec.resolution == "rfc3263"]
    if rfc3263:
        modules = sorted({probe.module for probe in rfc3263})
        lines += [
            "",
            f"resolution: RFC 3263 (NAPTR -> SRV -> A/AAAA) for {len(rfc3263)} probe"
            f"{'s' if len(rfc3263) != 1 else ''} (module{'s' if len(modules) != 1 else ''}"
            f" {', '.join(modules)}), asking {config.dns.describe()}; every other probe: A/AAAA",
        ]
    if config.rtp:
        lines += ["", *_describe_rtp(config.rtp)] if lines else _describe_rtp(config.rtp)
    if config.listen:
        lines += ["", *_describe_listen(config.listen)] if lines else _describe_listen(config.listen)
    targets = len(config.target_hosts)
    used = sorted({probe.module for probe in config.probes})
    rtp = len(config.rtp)
    lines.append(
        f"{config.source}: OK: {len(config.probes)} probe{'s' if len(config.probes) != 1 else ''}"
        f" on {targets} host{'s' if targets != 1 else ''}"
        + (f", modules {', '.join(used)}" if used else " ([[targets]] is empty)")
        + (f", {rtp} RTP peer{'s' if rtp != 1 else ''}" if rtp else "")
        + (
            f", {len(config.listen)} inbound listener{'s' if len(config.listen) != 1 else ''}"
            if config.listen
            else ""
        )
    )
    return "\n".join(lines)
