"""A real Prometheus server for the lab: scrapes what a test tells it to, answered through its HTTP API.

    prometheus --config.file=CFG --storage.tsdb.path=DIR --web.listen-address=127.0.0.1:P --log.level=info

The configuration is written by the caller as a dict and saved as JSON, which Prometheus's YAML parser
reads as YAML (JSON is a subset of YAML), so no YAML library is needed. The TSDB lives in a fresh
directory of the session's lab directory, one per instance.

Facts this relies on (Prometheus 2.42 as packaged by Debian, with promtool):
- `/-/ready` answers 503 until the TSDB is open, then 200; a TCP connect alone is not enough.
- The scrape manager applies new target sets on a 5 s ticker, so the first scrape of a static target comes
  about 5-6 s after start-up, whatever `scrape_interval` says; later scrapes follow `scrape_interval`.
- `scrape_timeout` must not exceed `scrape_interval`; Prometheus sends it to the target in the
  `X-Prometheus-Scrape-Timeout-Seconds` header (umprobe's /probe derives its deadline from it).
- A port already taken makes it log `bind: address already in use` (lower case) and exit 1.
- SIGTERM makes it close the TSDB and exit 0 within a second or so.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.lab.proc import LabProcess, LabStartError, require_binary

__all__ = ["PrometheusServer"]


class PrometheusServer:
    """One Prometheus on `host:port` with the configuration `config` (a dict, as the YAML file would be)."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        port: int,
        log_dir: Path,
        host: str = "127.0.0.1",
        name: str = "prometheus",
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        binary = require_binary("prometheus")
        self.config_path = log_dir / f"{name}-{port}.yml"
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        self.data_dir = log_dir / f"{name}-{port}-data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = LabProcess(
            name,
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address={host}:{port}",
                "--log.level=info",
            ],
            log_dir=log_dir,
            ready=[(host, port)],
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> PrometheusServer:
        """Start, then wait (bounded) until /-/ready answers 200."""
        try:
            self.process.start()
        except LabStartError as exc:
            conflict = "address already in use" in self.process.log_text().lower()
            raise LabStartError(str(exc), port_conflict=exc.port_conflict or conflict) from None
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.process.stop()
            raise
        self.process.startup_seconds = time.monotonic() - (self.process.started_at or 0.0)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.process.is_alive():
                break
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1.0) as response:
                    if response.status == 200:
                        return
                    last = f"status {response.status}"
            except urllib.error.HTTPError as exc:
                with exc:
                    last = f"status {exc.code}"
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise LabStartError(
            f"{self.name} was not ready on {self.url}/-/ready within {timeout} s (last: {last!r})\n"
            f"{self.process.describe()}",
            port_conflict="address already in use" in self.process.log_text().lower(),
        )

    def stop(self) -> int | None:
        return self.process.stop()

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH?params; the `data` of a `success` answer (anything else raises)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5.0) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raise AssertionError(
                    f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}"
                ) from None
        if body.get("status") != "success":
            raise AssertionError(f"{url}: {body!r}")
        return body["data"]

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query that returns a vector: [(labels, value)] (labels include `__name__` if kept)."""
        data = self.api("query", query=promql)
        if data["resultType"] != "vector":
            raise AssertionError(f"{promql!r}: expected a vector, got {data['resultType']}")
        return [(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]
