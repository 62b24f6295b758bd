"""Writes that survive shared storage: a temp file named after its writer, fsynced, renamed, the folder fsynced.

A writer killed mid-write leaves at most its temp file; `remove_abandoned_temps` deletes those of dead writers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

TEMP_SUFFIX = ".tmp"
ABANDONED_AFTER_SECONDS = 86400  # a temp file of another host this old belongs to a writer that died


FileIdentity = tuple[int, int, int, int, int]


def file_identity(info: os.stat_result) -> FileIdentity:
    """What changes whenever a file is written or replaced: device, inode, size, mtime_ns and ctime_ns (`touch -r`
    restores an mtime, never a ctime)."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def is_private_folder(folder: Path) -> bool:
    """`folder` is a real folder (not a link) of this user that nobody else can write; OSError when it cannot be
    looked at. What a node-local copy and an index of hashes need: a folder others could write could hold files
    they planted."""
    info = os.lstat(folder)
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}{TEMP_SUFFIX}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A temp file unique to this host and process for the block to write; once it did, the file is fsynced and
    renamed over `path`. When the block fails, the temp file is removed and `path` is untouched."""
    tmp = _temp_path(path)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def fsync_folder(folder: Path) -> None:
    """Make the renames into `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write to a temp file unique to this host and process, fsync it, rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write((json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    fsync_folder(path.parent)


def abandoned_temps(folder: Path) -> list[Path]:
    """The temp files in `folder` of writers that died mid-write (SIGKILL, node lost).

    A temp file names its writer's host and pid: on this host it is abandoned once that process is gone; a
    file of another host is abandoned once it is a day old (no write takes that long)."""
    found, host = [], socket.gethostname()
    for tmp in folder.glob(f".*{TEMP_SUFFIX}") if folder.is_dir() else []:
        writer_host, _, pid = tmp.name[: -len(TEMP_SUFFIX)].partition(".json.")[2].rpartition(".")
        try:
            if writer_host == host and pid.isdigit():
                abandoned = not _process_exists(int(pid))
            else:
                abandoned = time.time() - tmp.stat().st_mtime > ABANDONED_AFTER_SECONDS
        except FileNotFoundError:
            continue
        if abandoned:
            found.append(tmp)
    return found


def remove_abandoned_temps(folder: Path) -> int:
    """Delete the temp files of dead writers in `folder`, so a crash leaves no litter. Returns how many went."""
    removed = 0
    for tmp in abandoned_temps(folder):
        try:
            tmp.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def server_now(folder: Path) -> float:
    """The file server's clock: the mtime of a file just written in `folder` (nodes' clocks may disagree, and
    file ages on shared storage are measured against it)."""
    probe = folder / f".clock.{socket.gethostname()}.{os.getpid()}"
    probe.write_bytes(b"")
    try:
        return probe.stat().st_mtime
    finally:
        probe.unlink()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process
    return True
