"""Fixtures for the network-layer tests: a throwaway PKI (made with umprobe.devcerts) and TLS pairs.

Everything runs in-process: TLS peers are umprobe's own server-side TLSStream (or a raw fake) over
``trio.testing.memory_stream_pair``, or real sockets on 127.0.0.1 port 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from OpenSSL import SSL

from umprobe.devcerts import DevCA, Issued
from umprobe.net.tls import TLSClientConfig, make_client_context, make_server_context


@dataclass(frozen=True)
class Pair:
    crt: str
    key: str
    issued: Issued


@dataclass(frozen=True)
class PKI:
    directory: Path
    ca: DevCA
    ca_file: str
    rogue_ca: DevCA
    rogue_ca_file: str
    server: Pair  # localhost, 127.0.0.1, ::1 from ca
    server_rsa: Pair  # localhost, RSA-2048, from ca
    server_ip_only: Pair  # 127.0.0.1, ::1 (no DNS SAN), from ca
    server_expired: Pair  # localhost, expired two days ago, from ca
    server_rogue: Pair  # localhost from rogue_ca
    client: Pair  # probe.test from ca
    client_rogue: Pair  # probe.test from rogue_ca


def _pair(issued: Issued, directory: Path, stem: str) -> Pair:
    crt, key = issued.write(directory, stem)
    return Pair(str(crt), str(key), issued)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = DevCA.create("umprobe test CA")
    rogue = DevCA.create("rogue CA")
    now = datetime.now(UTC)
    return PKI(
        directory=directory,
        ca=ca,
        ca_file=str(ca.write_ca(directory, "ca")),
        rogue_ca=rogue,
        rogue_ca_file=str(rogue.write_ca(directory, "rogue-ca")),
        server=_pair(ca.issue(["localhost", "127.0.0.1", "::1"]), directory, "server"),
        server_rsa=_pair(ca.issue(["localhost"], key_type="rsa"), directory, "server-rsa"),
        server_ip_only=_pair(ca.issue(["127.0.0.1", "::1"], common_name="ip-only"), directory, "server-ip"),
        server_expired=_pair(
            ca.issue(["localhost"], not_after=now - timedelta(days=2)), directory, "server-expired"
        ),
        server_rogue=_pair(rogue.issue(["localhost"]), directory, "server-rogue"),
        client=_pair(ca.issue(["probe.test"], server_auth=False), directory, "client"),
        client_rogue=_pair(rogue.issue(["probe.test"]), directory, "client-rogue"),
    )


ServerCtxFactory = Callable[..., SSL.Context]
ClientCtxFactory = Callable[..., SSL.Context]


@pytest.fixture
def server_ctx(pki: PKI) -> ServerCtxFactory:
    def make(
        pair: Pair | None = None,
        *,
        require_client_cert: bool = False,
        min_version: str = "1.2",
        max_version: str | None = None,
    ) -> SSL.Context:
        pair = pair or pki.server
        return make_server_context(
            cert_file=pair.crt,
            key_file=pair.key,
            ca_file=pki.ca_file if require_client_cert else None,
            require_client_cert=require_client_cert,
            min_version=min_version,
            max_version=max_version,
        )

    return make


@pytest.fixture
def client_ctx(pki: PKI) -> ClientCtxFactory:
    def make(
        *,
        cert: Pair | None = None,
        ca_file: str | None = None,
        min_version: str = "1.2",
        max_version: str | None = None,
        ciphers: str | None = None,
    ) -> SSL.Context:
        return make_client_context(
            TLSClientConfig(
                ca_file=ca_file or pki.ca_file,
                cert_file=cert.crt if cert else None,
                key_file=cert.key if cert else None,
                min_version=min_version,
                max_version=max_version,
                ciphers=ciphers,
            )
        )

    return make
