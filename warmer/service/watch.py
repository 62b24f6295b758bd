"""`watch`: keep a node's cache warm by itself. Every interval it finds the datasets' plans, takes each target's
status for this node's environment, and warms the cold, stale and damaged ones one at a time, through `warm`'s own
code path and locks (warmers on other nodes still single-flight with it).

A failing target is retried with exponential backoff; a dataset whose plans cannot be read is reported once per
change and skipped; SIGTERM or SIGINT stop it within seconds, killing its replays (a stopped warm publishes
nothing). When torch, Triton or nnU-Net change on disk it re-executes itself, so the next pass fingerprints
with the new software.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from warmer.cache.digests import DigestIndex
from warmer.cache.layout import CacheDir
from warmer.cache.locking import LockPolicy
from warmer.cache.manifest import ManifestMemo
from warmer.cache.staging import default_scratch
from warmer.cache.trust import require_trusted, shared_root_for_writing
from warmer.errors import UserError
from warmer.pipeline.status import StatusReader
from warmer.pipeline.warm import warm_targets
from warmer.report import Reporter
from warmer.service.backoff import Backoff
from warmer.service.discovery import PlansWatch, find_datasets, plans_identity
from warmer.service.metrics import ServiceMetrics
from warmer.values.compat import installed_version
from warmer.values.plans import DatasetPlans, resolve_dataset_name
from warmer.values.profiles import JobEnvironment
from warmer.values.targets import Target, TargetRequest, build_targets, check_request, resolve_device

SOFTWARE = ("torch", "triton", "nnunetv2", "dynamic_network_architectures", "nnunet-warmer")


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived: unwind (replays are killed on the way) and exit 0."""


@dataclass(frozen=True)
class WatchRequest:
    """What to keep warm (-d/-c filter what is found; empty: everything) and how often to look."""

    datasets: tuple[str, ...]
    configurations: tuple[str, ...]
    plans_identifier: str
    trainer: str
    device: str
    interval: float
    retry_base: float
    retry_cap: float
    lock: LockPolicy


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise `StopRequested` wherever the service is; a second signal during the cleanup is
    ignored, so the cleanup (killing replays, releasing locks) runs to its end."""

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise StopRequested(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def installed_software() -> dict[str, str]:
    """Versions on disk now (not the ones imported), to notice an upgrade under a running service."""
    return {name: installed_version(name) for name in SOFTWARE}


class Watcher:
    """The state the service keeps between passes: plans seen and the targets read from them, errors reported,
    retries due, the last counts; the manifests parsed and the closure files hashed, each with the identity its
    file had, so a pass reads only what changed."""

    def __init__(self, request: WatchRequest, cache: CacheDir, environment: JobEnvironment, report: Reporter,
                 metrics: ServiceMetrics | None) -> None:
        self.request, self.cache, self.environment = request, cache, environment
        self.report, self.metrics = report, metrics
        self.device = resolve_device(request.device)
        self.plans = PlansWatch()
        self.targets: dict[str, tuple[DatasetPlans, list[Target]]] = {}
        self.manifests = ManifestMemo()
        self.index = DigestIndex.open(cache, default_scratch(dict(os.environ)))
        self.backoff = Backoff(request.retry_base, request.retry_cap)
        self.not_compiling: set[str] = set()
        self.software = installed_software()
        self.last_counts: tuple[dict[str, int], int] | None = None
        self.warms = 0

    def serve(self) -> None:
        while True:
            self.restart_if_software_changed()
            self.run_pass()
            time.sleep(self.request.interval)

    def restart_if_software_changed(self) -> None:
        now = installed_software()
        changed = [f"{name} {self.software[name]} -> {now[name]}" for name in SOFTWARE
                   if now[name] != self.software[name]]
        if changed:
            self.report(f"software changed on disk ({', '.join(changed)}): re-executing to fingerprint with it")
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, "-m", "warmer", *sys.argv[1:]])

    def run_pass(self) -> dict[str, int]:
        """One look at every target; warms what is not warm and due. Returns the count of targets per state,
        which it reports when it changed or a warm ran.

        Where nothing changed, a pass reads no file's content but the installed packages' metadata: it lists the
        datasets and each target's manifest folder, and stats each dataset's plans and dataset.json, each
        manifest and each file the manifests list."""
        states: collections.Counter[str] = collections.Counter()
        unreadable, warms_before = 0, self.warms
        reader = StatusReader(self.cache, self.environment, self.index, self.manifests)
        for dataset in find_datasets(self.request.plans_identifier, self.request.datasets):
            found = self._dataset_targets(dataset)
            if found is None:
                unreadable += 1
                continue
            dp, targets = found
            for target in targets:
                states[self._keep_warm(reader, dp, target)] += 1
        self.index.save()
        counts = dict(sorted(states.items()))
        if (counts, unreadable) != self.last_counts or self.warms != warms_before:
            summary = ", ".join(f"{n} {state}" for state, n in counts.items()) or "none found yet"
            self.report(f"targets: {summary}" + (f"; {unreadable} dataset(s) skipped" if unreadable else ""))
            self.last_counts = (counts, unreadable)
        self._metrics(lambda m: m.record_pass(counts, unreadable, time.time()))
        return counts

    def _dataset_targets(self, dataset: str) -> tuple[DatasetPlans, list[Target]] | None:
        """The dataset's plans and targets, read again only when its plans or dataset.json were written since the
        last pass, or None (reported once per change of its plans) when they cannot be read; a change of plans is
        reported as it is seen."""
        try:
            name = resolve_dataset_name(dataset)
            change = self.plans.changed(dataset, plans_identity(name, self.request.plans_identifier))
            if change is None and dataset in self.targets:
                return self.targets[dataset]
            self.targets.pop(dataset, None)
            if change:
                self.report(f"{name}: plans {change}")
            dp, available = check_request(TargetRequest(name, (), self.request.plans_identifier,
                                                        self.request.trainer, self.request.device))
        except UserError as e:
            if self.plans.first_report_of(dataset, str(e)):
                self.report(f"{dataset}: skipped: {e}")
            return None
        wanted = [c for c in available if not self.request.configurations or c in self.request.configurations]
        self.targets[dataset] = dp, build_targets(dp, wanted, self.request.trainer, [self.device])
        return self.targets[dataset]

    def _keep_warm(self, reader: StatusReader, dp: DatasetPlans, target: Target) -> str:
        """The target's state after this pass: warmed now if it was not warm and its retry is due."""
        status = reader.status(dp, target)
        key = f"{target.label}@{status.fingerprint_id}"
        if key in self.not_compiling:
            return "no-compile"
        if status.state == "warm" or not self.backoff.due(key, time.time()):
            return status.state
        self.report(f"{target.label}: {status.state}; warming")
        self.warms += 1
        start = time.monotonic()
        failure, compiles = self._warm(dp, target)
        seconds = time.monotonic() - start
        self._metrics(lambda m: m.record_warm(failure is None, seconds))
        if failure is None:
            self.backoff.succeeded(key)
            if not compiles:  # nothing to warm until its plans, trainer or software change (another key)
                self.not_compiling.add(key)
                return "no-compile"
            return "warm"
        retry = self.backoff.failed(key, time.time())
        self.report(f"{target.label}: warm failed ({failure}); retry {retry.failures} in {retry.delay:.0f} s, at "
                    f"{time.strftime('%H:%M:%S', time.localtime(retry.due))}")
        return status.state

    def _warm(self, dp: DatasetPlans, target: Target) -> tuple[str | None, bool]:
        """Warm one target as `warm` does: the failure as one line (or None), and whether its trainer compiles
        on this device at all."""
        try:
            require_trusted(self.cache)
            with shared_root_for_writing(self.cache):
                for group in warm_targets(dp, [target], self.cache, self.environment,
                                          self.request.lock, self.report):
                    if group.failure is not None:
                        return group.failure, True
                    for outcome in group.outcomes:
                        self.report(f"{target.label}: {outcome.message}")
                        if outcome.state == "no-compile":
                            return None, False
        except UserError as e:
            return str(e), True
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                return f"{e.strerror}: {e.filename}", True
            raise
        return None, True

    def _metrics(self, update: Callable[[ServiceMetrics], None]) -> None:
        if self.metrics is None:
            return
        try:
            update(self.metrics)
        except UserError as e:
            self.report(f"metrics: {e}")


def watch(request: WatchRequest, cache: CacheDir, environment: JobEnvironment, report: Reporter,
          metrics: ServiceMetrics | None) -> int:
    """Run until SIGTERM or SIGINT; exit code 0 then."""
    watcher = Watcher(request, cache, environment, report, metrics)
    with stop_on_signals():
        try:
            if metrics is not None:
                metrics.serve()
            report(f"watching {', '.join(request.datasets) or 'every dataset in nnUNet_preprocessed'} every "
                   f"{request.interval:g} s; cache {cache.root}")
            watcher.serve()
        except StopRequested as e:
            report(f"stopped on {e}")
    return 0
