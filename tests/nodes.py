"""Cluster nodes on one machine, sharing the real GlusterFS volume that `.ci/gluster up` serves.

Each node is a mount namespace and a UTS namespace of its own: its own FUSE mount of the volume at `NODE_MOUNT`
(default, caching mount options: what one client sees of another's writes lags as on NFS), its own hostname and
its own /tmp (node-local scratch; a checkout of this repository under /tmp stays visible there). Commands run
inside a node through `nsenter`. The host's own mount at
`HOST_MOUNT` plays the login node; `BRICK` is the server's copy, which no client cache sits in front of.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

STATE = Path("/var/lib/nnunet-warmer-gluster")
BRICK = STATE / "brick"
HOST_MOUNT = Path("/mnt/nnunet-warmer-gluster-host")
NODE_MOUNT = Path("/mnt/nnunet-warmer-shared")
SERVER, VOLUME = "127.0.0.2", "warmer"
REPOSITORY = Path(__file__).resolve().parent.parent  # the nodes run its virtual environment and trainers


def gluster_up() -> bool:
    return os.path.ismount(HOST_MOUNT)


def _mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


class Node:
    """One simulated node: `run` and `popen` start commands inside it; `crash` kills everything in it at once,
    its FUSE client included, as a node that loses power."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tmp = STATE / "nodes" / name / "tmp"  # its /tmp, seen from the host
        shutil.rmtree(self.tmp.parent, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.tmp.chmod(0o1777)
        host_tmp = self.tmp.parent / "host-tmp"  # the host's /tmp, for what must stay visible under the node's
        host_tmp.mkdir()
        keep = [p.relative_to("/tmp") for p in (REPOSITORY,) if p.is_relative_to("/tmp")]  # a checkout in /tmp
        script = " && ".join([
            f"hostname {name}", f"mount -t glusterfs {SERVER}:/{VOLUME} {NODE_MOUNT}",
            f"mount --bind /tmp {host_tmp}", f"mount --bind {self.tmp} /tmp",
            *(f"mkdir -p /tmp/{k} && mount --bind {host_tmp}/{k} /tmp/{k}" for k in keep),
            "echo ready", f"exec -a 'nnunet-warmer-node {name}' sleep infinity"])
        self._unshare = subprocess.Popen(["unshare", "--mount", "--uts", "--propagation", "private", "--fork",
                                          "bash", "-c", script], stdout=subprocess.PIPE, text=True)
        assert self._unshare.stdout is not None
        if self._unshare.stdout.readline().strip() != "ready":
            self._unshare.kill()
            raise RuntimeError(f"node {name}: could not mount {SERVER}:/{VOLUME} (is `.ci/gluster up` running?)")
        children = subprocess.run(["pgrep", "-P", str(self._unshare.pid)], capture_output=True, text=True)
        self.pid = int(children.stdout.split()[0])
        self.namespace = _mount_namespace(self.pid)

    def wrap(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-u", "--", *argv]

    def run(self, argv: list[str], env: dict[str, str], timeout: float = 1800,
            **kwargs: Any) -> subprocess.CompletedProcess:
        return subprocess.run(self.wrap(argv), env=env, capture_output=True, text=True, timeout=timeout, **kwargs)

    def popen(self, argv: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(self.wrap(argv), env=env, **kwargs)

    def processes(self) -> list[int]:
        """Every process in this node's mount namespace (its FUSE client too)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.pid and _mount_namespace(int(entry.name)) == \
                    self.namespace:
                found.append(int(entry.name))
        return found

    def fuse_client(self) -> int:
        (pid,) = [p for p in self.processes()
                  if "glusterfs" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode()]
        return pid

    def crash(self) -> None:
        """SIGKILL everything on the node at once: its jobs, its FUSE client (its locks go with it)."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        self.crash()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._unshare.wait(timeout=30)
        shutil.rmtree(self.tmp.parent, ignore_errors=True)
