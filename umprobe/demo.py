"""`umprobe demo`: a whole Exchange UM server's SIP listeners on loopback, probed the way a real one would be.

No Exchange needed. The demo makes a throwaway CA, a server certificate and a client certificate in a
temporary directory, binds one loopback listener per UM port of the `exchange2016` profile in Dual mode, and
answers SIP OPTIONS on them with umprobe's own responder (mutual TLS where Exchange uses it). The worker ports
are laid out the way one vendor documents them (TCP on 5065/5067, TLS on 5066/5068), so the output also shows
why umprobe probes every worker port with both transports and judges them as a group.

Exchange's real ports (5060-5068) usually need privileges and may be taken, so each is served on a free
ephemeral port; the table shows the ports actually probed and the mapping is printed first.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from umprobe.check import CheckItem, CheckReport, Thresholds, evaluate, run_check
from umprobe.devcerts import DevCA
from umprobe.net.tls import TLSClientConfig, make_server_context
from umprobe.peer.sip_responder import serve_sip_responder
from umprobe.probes.sip_options import SipProbeSpec
from umprobe.profiles import expand_profile

__all__ = ["DEMO_LAYOUT", "DemoPort", "run_demo"]

DEMO_SERVER_HEADER = "RTCC/5.0.0.0 MSExchangeUM/15.01.2507.017 (umprobe demo)"


@dataclass(frozen=True, slots=True)
class DemoPort:
    exchange_port: int
    transport: str  # what the demo serves on it
    component: str


DEMO_LAYOUT = (
    DemoPort(5060, "tcp", "UM call router"),
    DemoPort(5061, "tls", "UM call router"),
    DemoPort(5062, "tcp", "UM service"),
    DemoPort(5063, "tls", "UM service"),
    DemoPort(5065, "tcp", "UM worker"),
    DemoPort(5066, "tls", "UM worker"),
    DemoPort(5067, "tcp", "UM worker"),
    DemoPort(5068, "tls", "UM worker"),
)


async def run_demo(*, check_seconds: float = 5.0, say: Callable[[str], None] = print) -> CheckReport:
    """Start the demo listeners, probe them with the exchange2016 profile in Dual mode, return the report."""
    with tempfile.TemporaryDirectory(prefix="umprobe-demo-") as tmp:
        directory = Path(tmp)
        ca = DevCA.create("umprobe demo CA")
        ca_file = ca.write_ca(directory, "ca")
        server_crt, server_key = ca.issue(["localhost", "127.0.0.1"], common_name="localhost").write(
            directory, "server"
        )
        client_crt, client_key = ca.issue(["probe.demo.invalid"], common_name="probe.demo.invalid").write(
            directory, "client"
        )
        server_ctx = make_server_context(
            cert_file=str(server_crt),
            key_file=str(server_key),
            ca_file=str(ca_file),
            require_client_cert=True,
        )
        async with trio.open_nursery() as nursery:
            mapping: dict[int, int] = {}
            for port in DEMO_LAYOUT:
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                mapping[port.exchange_port] = listeners[0].socket.getsockname()[1]
                await nursery.start(
                    partial(
                        serve_sip_responder,
                        listeners,
                        tls_context=server_ctx if port.transport == "tls" else None,
                        server_header=DEMO_SERVER_HEADER,
                    )
                )
            say("umprobe demo: an Exchange 2016 UM server in Dual mode, on loopback (no Exchange needed)")
            for port in DEMO_LAYOUT:
                say(
                    f"  {port.component:15} {port.exchange_port}/{port.transport:3} "
                    f"served on 127.0.0.1:{mapping[port.exchange_port]}"
                )
            say(f"  certificates (throwaway CA, mutual TLS) in {directory}")
            say("")
            tls = TLSClientConfig(ca_file=str(ca_file), cert_file=str(client_crt), key_file=str(client_key))
            items = [
                CheckItem(
                    SipProbeSpec(
                        host="127.0.0.1",
                        port=mapping[spec.port],
                        transport=spec.transport,
                        listener=spec.listener,
                        tls=tls,
                        server_name="localhost",
                        families=("ipv4",),
                    ),
                    required=spec.required,
                    group=spec.group,
                )
                for spec in expand_profile("exchange2016", "dual")
            ]
            pairs = await run_check(items, deadline=trio.current_time() + check_seconds)
            nursery.cancel_scope.cancel()
    return evaluate(pairs, Thresholds())
