"""The ledger: one JSON line per `run` and per warmed target, appended to the shared cache directory.

Each host appends to its own file (`CacheDir.ledger_file(host)`) under an flock, one `write` per record, then
fsyncs, so concurrent writers on one host never interleave and hosts never append to the same file over NFS.
Readers skip lines they cannot parse (a crash mid-write can leave a torn last line).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from filelock import FileLock

from warmer.cache.files import atomic_write_json
from warmer.cache.layout import CacheDir
from warmer.report import Reporter


def append(cache: CacheDir, record: dict[str, Any]) -> None:
    """Append one record (time and host are added) to this host's ledger file."""
    cache.ledger.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    line = json.dumps({"time": time.time(), "host": host, **record}, sort_keys=True, default=str) + "\n"
    path = cache.ledger_file(host)
    with FileLock(str(path) + ".lock"):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o664)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # end a line torn by a writer that died, so this record stays whole
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def append_or_warn(cache: CacheDir, record: dict[str, Any], warn: Reporter) -> None:
    """Append, but a cache dir this user cannot write must not fail the job: say so and go on."""
    try:
        append(cache, record)
    except OSError as e:
        warn(f"nnunet-warmer: ledger not written ({e}); the cache dir is read-only for this user")


def records(cache: CacheDir, since: float = 0.0) -> Iterator[dict[str, Any]]:
    """Every parseable record of every host at or after `since` (seconds since the epoch)."""
    for path in sorted(cache.ledger.glob("*.jsonl")) if cache.ledger.is_dir() else []:
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and float(record.get("time", 0)) >= since:
                    yield record


def period_start(cache: CacheDir) -> float:
    """When `stats --zero` last started a new period (0 if never)."""
    try:
        return float(json.loads(cache.ledger_period_marker.read_text())["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def start_new_period(cache: CacheDir) -> float:
    now = time.time()
    atomic_write_json(cache.ledger_period_marker, {"since": now})
    return now
