"""`nnunet-warmer` that SIGKILLs its own process group at one point of writing a manifest (fault injection).

usage: python crashing_warmer.py POINT FRACTION nnunet-warmer-arguments...

POINT is where the crash lands in `publish.atomic_write_json`, the way a power cut or the OOM killer would:
  partial  the temp file's fsync: only FRACTION of its bytes reached the disk
  written  the temp file is complete and fsynced; the rename has not happened
  renamed  the rename happened; the directory has not been fsynced
Only writes under the cache's manifests/ crash; every other write runs as usual.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def _is_manifest_temp(path: str) -> bool:
    return f"{os.sep}manifests{os.sep}" in path and path.endswith(".tmp")


def _crash() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _install(point: str, fraction: float) -> None:
    real_fsync: Callable[[int], None] = os.fsync
    real_replace: Callable[..., Any] = os.replace

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if point == "partial" and _is_manifest_temp(path):
            os.ftruncate(fd, int(os.fstat(fd).st_size * fraction))
            real_fsync(fd)
            _crash()
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kwargs: Any) -> None:
        if _is_manifest_temp(os.fspath(src)):
            if point == "written":
                _crash()
            real_replace(src, dst, **kwargs)
            if point == "renamed":
                _crash()
            return
        real_replace(src, dst, **kwargs)

    os.fsync = fsync
    os.replace = replace


if __name__ == "__main__":
    _install(sys.argv[1], float(sys.argv[2]))
    from warmer.cli import main

    sys.exit(main(sys.argv[3:]))
