"""The lab PKI, made with `umprobe.devcerts` and written to a session directory.

- the lab CA, which Kamailio and socat trust for client certificates and the tests trust for servers;
- server certificates, all from the lab CA: "good" (localhost, 127.0.0.1, ::1, um.lab.test; ECDSA P-256),
  "rsa" (the same names, RSA-2048), "expired" (the same names, expired yesterday) and "wrong_name"
  (other.lab.test only);
- a client certificate for probe.lab.test from the lab CA;
- a rogue CA and a client certificate for probe.lab.test from it (a server must reject it).
Every leaf carries both serverAuth and clientAuth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.lab.kamailio import CertPair
from umprobe.devcerts import DevCA

__all__ = ["SERVER_NAMES", "CertPair", "LabPKI", "build_lab_pki"]

SERVER_NAMES = ("localhost", "127.0.0.1", "::1", "um.lab.test")
CLIENT_NAME = "probe.lab.test"
WRONG_NAME = "other.lab.test"


@dataclass(frozen=True, slots=True)
class LabPKI:
    directory: Path
    ca_file: Path
    rogue_ca_file: Path
    server: CertPair
    server_rsa: CertPair
    server_expired: CertPair
    server_wrong_name: CertPair
    client: CertPair
    rogue_client: CertPair

    @property
    def server_certs(self) -> dict[str, CertPair]:
        """Kamailio's certificate choices by name."""
        return {
            "good": self.server,
            "rsa": self.server_rsa,
            "expired": self.server_expired,
            "wrong_name": self.server_wrong_name,
        }


def build_lab_pki(directory: Path) -> LabPKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = DevCA.create("umprobe lab CA")
    rogue = DevCA.create("umprobe rogue CA")
    yesterday = datetime.now(UTC) - timedelta(days=1)

    return LabPKI(
        directory=directory,
        ca_file=ca.write_ca(directory, "lab-ca"),
        rogue_ca_file=rogue.write_ca(directory, "rogue-ca"),
        server=CertPair(*ca.issue(SERVER_NAMES).write(directory, "server")),
        server_rsa=CertPair(*ca.issue(SERVER_NAMES, key_type="rsa").write(directory, "server-rsa")),
        server_expired=CertPair(
            *ca.issue(SERVER_NAMES, not_before=yesterday - timedelta(days=30), not_after=yesterday).write(
                directory, "server-expired"
            )
        ),
        server_wrong_name=CertPair(*ca.issue([WRONG_NAME]).write(directory, "server-wrong-name")),
        client=CertPair(*ca.issue([CLIENT_NAME]).write(directory, "client")),
        rogue_client=CertPair(*rogue.issue([CLIENT_NAME]).write(directory, "rogue-client")),
    )
