"""`umprobe run`: the long-running prober. Config in, scheduler and exporter running, signals handled.

Theory of operation
-------------------
`run_daemon` loads the config (a bad one raises `ConfigError`, a `UserError`: one line, exit 3), sets up
logging, and `Daemon.from_config` builds the `ResultStore`, the shared `TLSContextCache` and the
`Scheduler`; `Daemon.serve` then runs three things in one nursery until a signal ends them:

- the exporter (`serve_exporter`), started first with `nursery.start` so that a port already in use is a
  one-line `ListenError` (a `UserError`; `umprobe run` exits 4 on it) before any probe runs;
- the scheduler (`Scheduler.run`);
- the signal watcher (the nursery's own body): SIGTERM and SIGINT cancel the nursery (in-flight probes are
  cancelled, their sockets closed, and `run_daemon` returns normally, so the process exits 0 well within
  a second); SIGHUP reloads.

Signals are received with `trio.open_signal_receiver`, opened before anything else starts, so a SIGHUP
that arrives early is a reload rather than the default "terminate".

Reload (SIGHUP or `POST /-/reload`, serialized by a lock): `reload_config` reads and validates the new file
(`load_config`, TLS files included: it builds every TLS context with the probes' own code; an empty file,
what an editor leaves for a moment while it rewrites one in place, is refused), then `tls_contexts` reads
every certificate and key the new jobs use into a new TLS context cache. On success: swap that cache in
(runs in flight keep the contexts they started with; certificate files are read at start and at each
successful reload and never in between, so they can be replaced or deleted meanwhile without effect, and a
replaced certificate takes effect for every probe, and /probe, at the reload), `store.set_probes` and
`store.set_rtp`, `scheduler.update` with every job, SIP probes and `[[rtp]]` sweeps alike (unchanged ones
keep their slots
and series; removed ones stop and their series disappear; the secret file is read again, and a changed
secret makes a changed RTP job), adopt the new concurrency limit and log settings, and
`store.set_reload(success=True)`. On failure: one log line with the one-line reason,
`store.set_reload(success=False, error=...)`, and the old config keeps running untouched. The listen
address cannot change without a restart; a reload that asks for another one is applied otherwise and says
so in a warning; so do the `[[listen]]` sections (inbound OPTIONS, `serve_inbound`: started right after the
exporter, each with its `InboundBook` in the store; an address that cannot be bound is a `ListenError` too,
and the listeners are split between shards like probes). Options given on the command line (--listen,
--log-format) win over the file, at start and on every reload.

RFC 3263 resolution (`resolution = "rfc3263"` modules): one `DnsClient` per loaded config (`dns_client`,
from `[dns]`, else the system's resolv.conf; none when no module uses it), built at start and at each
successful reload and handed to every SIP run (scheduled and /probe) through `_DnsHolder`, so runs in
flight keep the client they started with and the next run asks the new nameservers. An explicit `[dns]`
that cannot be used any more (its resolv.conf gone) rejects the reload like an unreadable certificate; a
system resolv.conf without nameservers leaves the client out, and each run then says why in its
`dns_error` result.

trio's nurseries raise exception groups; `run_daemon` unwraps a lone `UserError` (the exporter's "cannot
listen on ...", a `ListenError`) so that the command line can print its one line (and exit 4 for it).

A `Daemon` does not need a file: `umprobe demo` builds its `Config` in memory (`parse_config`) and gives
`Daemon.from_config` a `load` function instead of a path, which a reload calls in place of `load_config`.
`serve` can run inside a caller's nursery (`nursery.start(daemon.serve)` returns the exporter's bound
addresses); its signal receiver is opened inside any the caller holds, so while it runs it gets SIGTERM,
SIGINT and SIGHUP, and the caller's receiver gets them again once it has returned.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import trio

from umprobe.config import Config, ConfigError, ListenConfig, ProbeConfig, RtpProbeConfig, load_config
from umprobe.errors import UserError
from umprobe.exporter import serve_exporter
from umprobe.inbound import InboundBook
from umprobe.logs import LogFormat, configure_logging, log_event
from umprobe.net.errors import TLSConfigError
from umprobe.net.tls import TLSClientConfig
from umprobe.peer.sip_responder import serve_inbound
from umprobe.probes.result import ProbeResult
from umprobe.probes.sip_options import SipProbeSpec, TLSContextCache
from umprobe.probes.sip_options import probe as sip_probe
from umprobe.scheduler import Job, Scheduler, tune_gc
from umprobe.secretfile import log_exposed
from umprobe.shard import ALL, Shard
from umprobe.store import ResultStore

if TYPE_CHECKING:
    from umprobe.net.rfc3263 import DnsClient

__all__ = ["Daemon", "dns_client", "lone_user_error", "reload_config", "run_daemon", "tls_contexts"]

_log = logging.getLogger("umprobe.daemon")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True, slots=True)
class _Share:
    """What one daemon runs of a config: its shard's SIP probes, RTP sweeps and inbound listeners."""

    probes: tuple[ProbeConfig, ...]
    rtp: tuple[RtpProbeConfig, ...]
    listen: tuple[ListenConfig, ...]

    @classmethod
    def of(cls, config: Config, shard: Shard) -> _Share:
        return cls(shard.select(config.probes), shard.select(config.rtp), shard.select(config.listen))

    @property
    def jobs(self) -> tuple[ProbeConfig | RtpProbeConfig, ...]:
        """What the scheduler runs, in `Config.jobs` order: the SIP probes, then the RTP sweeps."""
        return (*self.probes, *self.rtp)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_contexts(jobs: Sequence[Job]) -> TLSContextCache:
    """A TLS context cache holding every context and client certificate `jobs` use, read from the files
    now (`TLSConfigError` if one cannot be), so that no probe run ever reads a certificate file."""
    cache = TLSContextCache()
    for job in jobs:
        if isinstance(job, RtpProbeConfig):
            if job.spec.tls is not None:
                cache.context(job.spec.tls)
        elif job.spec.transport == "tls":
            tls = job.spec.tls or TLSClientConfig()
            cache.context(tls)
            cache.client_cert(tls)
    return cache


def dns_client(config: Config) -> DnsClient | None:
    """The nameserver client of the config's RFC 3263 modules (`[dns]`, else the system's resolv.conf);
    None when no module resolves by RFC 3263, or when the system's resolv.conf names no nameserver (each
    run then reports that as its `dns_error`). Raises `ConfigError` when an explicit `[dns]` is unusable."""
    if not any(module.resolution == "rfc3263" for module in config.modules.values()):
        return None
    from umprobe.net.rfc3263 import DnsClient, DnsConfigError  # dnspython: only when a module uses it

    dns = config.dns
    try:
        if dns.nameservers is not None:
            return DnsClient(dns.nameservers)
        if dns.resolv_conf is not None:
            return DnsClient(resolv_conf=dns.resolv_conf)
        return DnsClient()
    except DnsConfigError as exc:
        if dns.nameservers is None and dns.resolv_conf is None:
            _log.warning("no nameserver for RFC 3263 resolution: %s", exc)
            return None
        raise ConfigError(f"{config.source}: dns: {exc}", source=config.source) from None


class _DnsHolder:
    """The DNS client in force, read by every SIP run when it starts (a reload replaces `client`)."""

    __slots__ = ("client",)

    def __init__(self, client: DnsClient | None) -> None:
        self.client = client

    def probe(
        self, spec: SipProbeSpec, *, deadline: float, contexts: TLSContextCache | None = None
    ) -> Coroutine[Any, Any, Sequence[ProbeResult]]:
        """`sip_options.probe` with the client in force (no extra coroutine: it returns probe's own)."""
        return sip_probe(spec, deadline=deadline, contexts=contexts, dns=self.client)


def reload_config(path: Path) -> Config:
    """`load_config` for a reload, which also refuses an empty file: a reload that lands while an editor
    rewrites the file in place (truncate, then write) must not replace every probe with nothing. (At start
    an empty file is a valid config without probes; a file that is only a comment still is on reload.)"""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = False  # load_config says why it cannot be read
    if empty:
        raise ConfigError(
            f"{path}: the file is empty (being written?): a reload never replaces the running probes with "
            "nothing; write the file atomically (a temporary file, then rename)",
            source=str(path),
        )
    return load_config(path)


class Daemon:
    """The running daemon's state: the config in force, and the one way to replace it (`reload`)."""

    def __init__(
        self,
        config_path: Path | None,
        config: Config,
        *,
        store: ResultStore,
        scheduler: Scheduler,
        listen: str,
        log_format: LogFormat | None = None,
        load: Callable[[], Config] | None = None,
        shard: Shard = ALL,
        vantage: str | None = None,
    ) -> None:
        """`load` reads the config again on a reload (default: `reload_config(config_path)`); a daemon
        without a file (`config_path=None`) must give one. `shard` picks this daemon's share of the
        config's jobs (all of them by default); `vantage` labels every per-probe series."""
        if load is None:
            if config_path is None:
                raise ValueError("a Daemon needs a config_path or a load function")
            load = partial(reload_config, config_path)
        self.config_path = config_path
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.listen = listen
        self.bound: tuple[tuple[str, int], ...] = ()
        self._log_format = log_format
        self._load = load
        self._lock = trio.Lock()
        self.shard = shard
        self.vantage = vantage
        # [[listen]]: this shard's inbound OPTIONS listeners and their books (changes need a restart)
        self.inbound: tuple[tuple[ListenConfig, InboundBook], ...] = ()
        # the RFC 3263 nameserver client of the config in force (from_config shares it with the scheduler)
        self.dns = _DnsHolder(None)

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        listen: str,
        config_path: Path | None = None,
        load: Callable[[], Config] | None = None,
        log_format: LogFormat | None = None,
        shard: Shard = ALL,
        vantage: str | None = None,
    ) -> Daemon:
        """A daemon for `config` (its `shard` of it) with a fresh store and scheduler, ready to `serve`.
        `vantage` (default: the config's `exporter.vantage`) labels every per-probe series."""
        share = _Share.of(config, shard)
        store = ResultStore()
        store.set_probes(share.probes)
        store.set_rtp(share.rtp)
        store.set_reload(success=True, at=time.time())
        try:
            contexts = tls_contexts(share.jobs)
        except TLSConfigError as exc:  # a file gone since load_config read it
            raise ConfigError(f"{config.source}: {exc}", source=config.source) from None
        dns = _DnsHolder(dns_client(config))
        scheduler = Scheduler(
            store, max_concurrency=config.scheduler.max_concurrency, contexts=contexts, probe_fn=dns.probe
        )
        scheduler.update(share.jobs)
        inbound = tuple(
            (
                listen,
                InboundBook(
                    listen.name,
                    started_at=time.time(),
                    expect=listen.expect,
                    max_identities=listen.max_identities,
                    at_risk_after=listen.at_risk_after,
                    demoted_after=listen.demoted_after,
                ),
            )
            for listen in share.listen
        )
        store.set_inbound([book for _, book in inbound])
        daemon = cls(
            config_path,
            config,
            store=store,
            scheduler=scheduler,
            listen=listen,
            log_format=log_format,
            load=load,
            shard=shard,
            vantage=vantage if vantage is not None else config.exporter.vantage,
        )
        daemon.inbound = inbound
        daemon.dns = dns
        return daemon

    @property
    def source(self) -> str:
        """What the config is read from, for log lines: the file, or the in-memory config's source name."""
        return str(self.config_path) if self.config_path is not None else self.config.source

    def get_config(self) -> Config:
        """The config in force (for the exporter's /probe and status page)."""
        return self.config

    async def run_probe(self, probe: ProbeConfig, deadline: float) -> Sequence[ProbeResult]:
        """One /probe run, with the TLS contexts in force (the certificates the last (re)load read)."""
        return await self.dns.probe(probe.spec, deadline=deadline, contexts=self.scheduler.contexts)

    async def reload(self, source: str = "http") -> bool:
        """Re-read the config file; True if the new one is in force, False if it was rejected (logged)."""
        async with self._lock:
            return self._reload_now(source)

    def _reload_now(self, source: str) -> bool:
        try:
            new = self._load()
            share = _Share.of(new, self.shard)
            contexts = tls_contexts(share.jobs)
            dns = dns_client(new)
        except (UserError, TLSConfigError) as exc:
            return self._reject(source, str(exc), None)
        except Exception as exc:  # a bug while loading must not take the running daemon down
            return self._reject(source, f"{type(exc).__name__}: {exc}", exc)
        old = self.config
        # Every certificate and key the new config uses was read just now: from here on, the files may be
        # replaced or deleted without effect until the next successful reload.
        self.scheduler.contexts, previous = contexts, self.scheduler.contexts
        previous.clear()
        self.dns.client = dns
        self.store.set_probes(share.probes)
        self.store.set_rtp(share.rtp)
        summary = self.scheduler.update(share.jobs)
        self.scheduler.max_concurrency = new.scheduler.max_concurrency
        if new.log != old.log:
            configure_logging(fmt=self._log_format or new.log.format, level=new.log.level)
        self.config = new
        self.store.set_reload(success=True, at=time.time())
        log_exposed(new, _log, own_gid=os.getegid())  # key and secret files others may read: a warning each
        log_event(
            _log,
            logging.INFO,
            "config reloaded",
            source=source,
            config=self.source,
            probes=len(share.probes),
            rtp_peers=len(share.rtp),
            added=len(summary.added),
            removed=len(summary.removed),
            changed=len(summary.changed),
            unchanged=summary.unchanged,
        )
        if new.exporter.listen != old.exporter.listen:
            log_event(
                _log,
                logging.WARNING,
                "exporter.listen changed; restart umprobe to listen there",
                listening=self.listen,
                wanted=new.exporter.listen,
            )
        if share.listen != tuple(listen for listen, _ in self.inbound):
            log_event(
                _log,
                logging.WARNING,
                "[[listen]] changed; restart umprobe to apply it (the running listeners stay as they are)",
                listening=",".join(listen.name for listen, _ in self.inbound),
                wanted=",".join(listen.name for listen in share.listen),
            )
        if new.exporter.vantage != old.exporter.vantage and self.vantage == old.exporter.vantage:
            log_event(
                _log,
                logging.WARNING,
                "exporter.vantage changed; restart umprobe to label series with it",
                vantage=self.vantage or "",
                wanted=new.exporter.vantage or "",
            )
        for what, ids in (
            ("added", summary.added),
            ("removed", summary.removed),
            ("changed", summary.changed),
        ):
            for probe_id in ids:
                log_event(_log, logging.DEBUG, f"probe {what}", probe_id=probe_id)
        return True

    def _reject(self, source: str, error: str, exc: BaseException | None) -> bool:
        log_event(
            _log,
            logging.ERROR,
            "config reload failed; the running config stays in force",
            source=source,
            config=self.source,
            error=error,
            exc_info=exc,
        )
        self.store.set_reload(success=False, at=time.time(), error=error)
        return False

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[tuple[str, int], ...]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run exporter, scheduler and signal handling until SIGTERM/SIGINT (or cancellation).

        `task_status.started()` gets the exporter's bound (host, port) pairs, also kept in `self.bound`."""
        with trio.open_signal_receiver(*_STOP_SIGNALS, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    partial(
                        serve_exporter,
                        self.listen,
                        self.store,
                        get_config=self.get_config,
                        reload=self.reload,
                        run_probe=self.run_probe,
                        vantage=self.vantage,
                    )
                )
                self.bound = bound
                for listen, book in self.inbound:
                    await nursery.start(partial(serve_inbound, listen, book))
                await nursery.start(self.scheduler.run)
                log_event(
                    _log,
                    logging.INFO,
                    "umprobe running",
                    config=self.source,
                    listen=" ".join(_hostport(str(h), int(p)) for h, p in bound),
                    probes=len(self.store.probes()),
                    rtp_peers=len(self.store.rtp_probes()),
                    inbound_listeners=len(self.inbound),
                    max_concurrency=self.scheduler.max_concurrency,
                    shard=str(self.shard),
                    vantage=self.vantage or "",
                )
                task_status.started(bound)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        nursery.start_soon(self.reload, "SIGHUP")
                        continue
                    log_event(_log, logging.INFO, "stopping", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def lone_user_error(group: BaseExceptionGroup[BaseException]) -> UserError | None:
    """The `UserError` a nursery's exception group holds when it holds nothing else (e.g. the exporter's
    "cannot listen on ..."), else None."""
    leaves = list(_leaves(group))
    return leaves[0] if len(leaves) == 1 and isinstance(leaves[0], UserError) else None


async def run_daemon(
    config_path: Path,
    *,
    listen: str | None,
    log_format: str | None,
    shard: Shard = ALL,
    vantage: str | None = None,
) -> None:
    """Run `umprobe run` until SIGTERM/SIGINT. Raises `UserError` (one line, exit 3) for a bad config and
    `ListenError` (one line, exit 4) for an exporter address that cannot be bound. `shard` and `vantage`
    (the command line's) win over the file."""
    if log_format not in (None, "text", "json"):
        raise UserError(f"--log-format must be text or json, not {log_format!r}")
    fmt = cast("LogFormat | None", log_format)
    config = load_config(config_path)
    tune_gc()  # the collector was the scheduler's largest source of lateness at 10,000 listeners
    configure_logging(fmt=fmt or config.log.format, level=config.log.level)
    log_exposed(config, _log, own_gid=os.getegid())  # key and secret files others may read: a warning each
    daemon = Daemon.from_config(
        config,
        listen=listen or config.exporter.listen,
        config_path=config_path,
        log_format=fmt,
        shard=shard,
        vantage=vantage,
    )
    try:
        await daemon.serve()
    except BaseExceptionGroup as group:
        error = lone_user_error(group)
        if error is not None:
            raise error from None
        raise
    log_event(_log, logging.INFO, "umprobe stopped")
