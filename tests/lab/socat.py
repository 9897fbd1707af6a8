"""socat as a mutual-TLS front end for a SIPp server (SIPp 3.6.1 here has no TLS).

    socat -d -d OPENSSL-LISTEN:P,bind=127.0.0.1,fork,reuseaddr,cert=CRT,key=KEY,cafile=CA,verify=1,
          min-version=TLS1.2  TCP:127.0.0.1:UPSTREAM

Facts this relies on (socat 1.7.4.4, OpenSSL 3.0):
- `cert=` and `key=` take the certificate and the key as separate PEM files; `cafile=` is the CA that
  client certificates must chain to and `verify=1` makes a client certificate mandatory.
- `min-version=`/`max-version=` (aliases of openssl-min/max-proto-version) take TLS1.2 / TLS1.3.
- `fork` handles each connection in a child process; the handshake happens in the child, so a rejected
  client certificate never disturbs the listener. `-d -d` logs each connection (and each failure) at notice.
- With TLS 1.3 a missing client certificate surfaces on the client's first read as alert 116
  (certificate required), as with Kamailio.
"""

from __future__ import annotations

from pathlib import Path

from tests.lab.proc import LabProcess, require_binary

__all__ = ["SocatTlsFrontEnd"]


class SocatTlsFrontEnd:
    def __init__(
        self,
        *,
        port: int,
        upstream: tuple[str, int],
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        log_dir: Path,
        require_client_cert: bool = True,
        min_version: str = "TLS1.2",
        host: str = "127.0.0.1",
        name: str = "socat-mtls",
    ) -> None:
        self.host = host
        self.port = port
        binary = require_binary("socat")
        listen = ",".join(
            [
                f"OPENSSL-LISTEN:{port}",
                f"bind={host}",
                "fork",
                "reuseaddr",
                f"cert={cert_file}",
                f"key={key_file}",
                f"cafile={ca_file}",
                f"verify={1 if require_client_cert else 0}",
                f"min-version={min_version}",
            ]
        )
        up_host, up_port = upstream
        connect = f"TCP6:[{up_host}]:{up_port}" if ":" in up_host else f"TCP4:{up_host}:{up_port}"
        self.process = LabProcess(
            name,
            [binary, "-d", "-d", listen, connect],
            log_dir=log_dir,
            ready=[(host, port)],
            stop_children_first=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> SocatTlsFrontEnd:
        self.process.start()
        return self

    def stop(self) -> int | None:
        return self.process.stop()
