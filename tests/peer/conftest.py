"""Fixtures for the echo peer's loopback tests: a throwaway PKI for the TLS control channel."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from umprobe.devcerts import DevCA


@dataclass(frozen=True)
class PeerPKI:
    ca_file: str
    server_crt: str
    server_key: str
    client_crt: str
    client_key: str


@pytest.fixture(scope="session")
def peer_pki(tmp_path_factory: pytest.TempPathFactory) -> PeerPKI:
    directory: Path = tmp_path_factory.mktemp("peer-pki")
    ca = DevCA.create("umprobe peer test CA")
    server_crt, server_key = ca.issue(["localhost", "127.0.0.1"]).write(directory, "server")
    client_crt, client_key = ca.issue(["probe.test"], server_auth=False).write(directory, "client")
    return PeerPKI(
        ca_file=str(ca.write_ca(directory, "ca")),
        server_crt=str(server_crt),
        server_key=str(server_key),
        client_crt=str(client_crt),
        client_key=str(client_key),
    )
