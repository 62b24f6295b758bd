"""Prometheus text-format metrics for node_exporter's textfile collector (`stats --metrics-file PATH`).

Ledger sums per dataset, configuration and GPU, plus how many targets in the cache are warm or stale for
the software on the host that writes the file (torch, Triton, CUDA, Python, nnU-Net versions).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from warmer.cache.layout import CacheDir
from warmer.cache.manifest import read_manifest_folder
from warmer.errors import UserError
from warmer.values.fingerprint import HostEnvironment, software_fingerprint
from warmer.values.profiles import JobEnvironment

LEDGER_GAUGES = (
    ("runs", "runs", "Wrapped training/predict runs recorded in the period"),
    ("warms", "warms", "Warmed targets recorded in the period"),
    ("warms_cannot_compile", "cannot_compile", "Warms that found the node cannot compile (no C compiler, a GPU too "
                                               "old for Triton, Triton missing)"),
    ("fx_hits", "fx_hit", "FX-graph cache hits in runs"),
    ("fx_misses", "fx_miss", "FX-graph cache misses in runs"),
    ("aot_hits", "aot_hit", "AOTAutograd cache hits in runs"),
    ("aot_misses", "aot_miss", "AOTAutograd cache misses in runs"),
    ("compile_seconds", "compile_seconds", "Seconds runs spent in torch.compile"),
    ("estimated_seconds_saved", "estimated_seconds_saved", "Cold compile seconds minus what runs still compiled"),
)


def target_states(cache: CacheDir, environment: JobEnvironment) -> dict[str, int]:
    """Targets whose newest manifest was verified with this host's software ("warm") or other software."""
    host = HostEnvironment(software_fingerprint(environment), {})
    states = {"warm": 0, "stale": 0}
    folders = {p.parent for p in cache.manifests.rglob("*.json")} if cache.manifests.is_dir() else set()
    for folder in folders:
        manifests = read_manifest_folder(folder)
        if not manifests:
            continue
        states["stale" if host.software_differences(manifests[0].fingerprint) else "warm"] += 1
    return states


def prometheus() -> ModuleType:
    """prometheus_client, which only the metrics need (the `metrics` extra): the one place that says so."""
    try:
        import prometheus_client
    except ImportError:
        raise UserError("metrics need prometheus_client: pip install 'nnunet-warmer[metrics]'") from None
    return prometheus_client


def write_textfile(path: Path, registry: Any) -> None:
    """`registry` in the text format at `path`, replaced atomically (prometheus_client writes a temp file and
    renames it)."""
    try:
        prometheus().write_to_textfile(os.fspath(path), registry)
    except OSError as e:
        raise UserError(f"cannot write metrics file {path} ({e.strerror}): pass a writable --metrics-file") from None


def write_metrics(path: Path, cache: CacheDir, summary: dict[str, Any], environment: JobEnvironment) -> None:
    client = prometheus()
    registry = client.CollectorRegistry()
    labels = ("dataset", "configuration", "gpu")
    for name, key, help_text in LEDGER_GAUGES:
        gauge = client.Gauge(f"nnunet_warmer_{name}", help_text, labels, registry=registry)
        for group in summary["groups"].values():
            gauge.labels(*(group[label] for label in labels)).set(group[key])
    targets = client.Gauge("nnunet_warmer_targets", "Targets in the cache by state for this host's software", ["state"],
                    registry=registry)
    for state, count in target_states(cache, environment).items():
        targets.labels(state).set(count)
    write_textfile(path, registry)
