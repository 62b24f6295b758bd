"""The service's Prometheus metrics: targets per state, warms done and failed, seconds spent, the last pass.

Served over HTTP (`--metrics-port`) or written for node_exporter's textfile collector (`--metrics-file`)."""

from __future__ import annotations

from pathlib import Path

from warmer.errors import UserError
from warmer.ledger.metrics import prometheus, write_textfile

STATES = ("warm", "cold", "stale", "damaged", "no-compile", "cannot-compile")


class ServiceMetrics:
    def __init__(self, textfile: Path | None, port: int | None, address: str) -> None:
        client = prometheus()
        client.disable_created_metrics()  # the *_created series say when this process started, which nobody asked
        self.textfile = textfile
        self.registry = client.CollectorRegistry()
        self.targets = client.Gauge("nnunet_warmer_watch_targets", "Targets by state for this node, at the last pass",
                             ["state"], registry=self.registry)
        self.datasets_failing = client.Gauge("nnunet_warmer_watch_datasets_unreadable",
                                      "Datasets skipped at the last pass (plans unreadable or invalid)",
                                      registry=self.registry)
        self.warms = client.Counter("nnunet_warmer_watch_warms", "Warms run by this service, by outcome", ["outcome"],
                             registry=self.registry)
        self.warm_seconds = client.Counter("nnunet_warmer_watch_warm_seconds", "Seconds spent warming",
                                    registry=self.registry)
        self.last_pass = client.Gauge("nnunet_warmer_watch_last_pass_timestamp_seconds",
                               "When the last pass over every target ended (Unix time)", registry=self.registry)
        for outcome in ("done", "failed"):
            self.warms.labels(outcome)
        self.port, self.address = port, address

    def serve(self) -> None:
        """Start the HTTP server of `--metrics-port`, if asked for. The service calls this once its SIGTERM handler
        is in place: in a container it is PID 1, which ignores a SIGTERM it does not handle, so a `docker stop`
        right after the port opened waited out its timeout and ended in SIGKILL."""
        if self.port is None:
            return
        try:
            prometheus().start_http_server(self.port, addr=self.address, registry=self.registry)
        except OSError as e:
            raise UserError(f"cannot serve metrics on {self.address}:{self.port} ({e.strerror}): pass another "
                            f"--metrics-port") from None

    def record_pass(self, states: dict[str, int], unreadable: int, end: float) -> None:
        for state in STATES:
            self.targets.labels(state).set(states.get(state, 0))
        self.datasets_failing.set(unreadable)
        self.last_pass.set(end)
        self.write()

    def record_warm(self, ok: bool, seconds: float) -> None:
        self.warms.labels("done" if ok else "failed").inc()
        self.warm_seconds.inc(seconds)
        self.write()

    def write(self) -> None:
        """The textfile, replaced atomically."""
        if self.textfile is not None:
            write_textfile(self.textfile, self.registry)
