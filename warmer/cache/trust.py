"""The cache is code: refuse a cache dir that people other than you and your team could write.

Whoever can write the cache can run code in every training job that reads it (inductor loads compiled
kernels and Python wrappers from it). A cache is trusted when nothing in it is world-writable and every
entry belongs to you, to root, or to a group you are in (a team cache: the group is who may write it).
A cache dir the warmer creates is group-shareable: setgid, so entries keep its group, with permissions
from your umask.

A job that runs on a node-local copy of its target loads only what that target's manifests list, so it checks only
that: the manifests, the files they list, and every folder from them up to the cache dir (one `lstat` each, however
many other targets the cache holds). Everything else (a job on the shared cache itself, whose misses can load any
file at a path torch computes; a job whose target is unknown or has no manifest that parses; `warm`) checks the
whole cache.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

from warmer.cache.layout import CacheDir
from warmer.cache.staging import TargetManifests
from warmer.errors import UserError

OVERRIDE_FLAG = "--allow-untrusted-cache"


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def untrusted_entries(root: Path) -> list[str]:
    """What makes the whole cache dir `root` unsafe to load code from, one phrase per offending path."""
    if not root.exists():
        return []
    paths = [root]
    for folder, dirs, files in os.walk(root):
        paths.extend(Path(folder) / name for name in (*dirs, *files))
    return _untrusted(paths)


def untrusted_in_closures(cache: CacheDir, closures: TargetManifests) -> list[str] | None:
    """What makes the part of the cache that a job loads from its node-local copy unsafe: the manifests of its
    targets, the files those list, and each folder above them up to the cache dir. None when no manifest of them
    parses (the job then compiles into its copy what the whole cache may hold: check all of it)."""
    if not closures.manifests:
        return None
    files = {*closures.paths, *(cache.root / relative for m in closures.manifests for relative in m.entries)}
    folders = {cache.root}
    for path in files:
        folders.update(p for p in path.parents if p.is_relative_to(cache.root))
    return _untrusted(sorted(folders) + sorted(files))


def _untrusted(paths: list[Path]) -> list[str]:
    me, groups = os.geteuid(), {os.getegid(), *os.getgroups()}
    found = []
    for path in paths:
        try:
            info = os.lstat(path)
        except OSError as e:  # a writer's temp file renamed (or a file removed) since the walk listed it; on a
            if e.errno in (errno.ENOENT, errno.ESTALE):  # network file system that may read as a stale handle
                continue
            raise
        if info.st_mode & stat.S_IWOTH and not stat.S_ISLNK(info.st_mode):
            found.append(f"{path} is world-writable")
        elif info.st_uid not in (me, 0) and info.st_gid not in groups:
            found.append(f"{path} belongs to {_owner(info.st_uid)}, who is not you, root, or in a group of yours")
    return found


def require_trusted(cache: CacheDir, closures: TargetManifests | None = None) -> None:
    """Refuse, in one line, a cache others could have planted code in: of the whole cache, or (`closures`) of what
    a job of those targets loads from its node-local copy."""
    found = untrusted_in_closures(cache, closures) if closures is not None else None
    if found is None:
        found = untrusted_entries(cache.root)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UserError(f"cache dir {cache.root} is not safe to load code from: {found[0]}{more}; every training "
                        f"job runs what is in it: fix the owner or permissions (chmod -R o-w), or pass "
                        f"{OVERRIDE_FLAG} if you trust everyone who can write it")


def make_shared_root(cache: CacheDir) -> None:
    """Create a new cache dir setgid, so that its group owns everything made below it (the kernel passes the
    group and the setgid bit on to new folders). An existing cache dir is left as its owner set it."""
    if cache.root.exists():
        return
    umask = os.umask(0)
    os.umask(umask)
    try:
        cache.root.mkdir(parents=True)
    except FileExistsError:  # another warmer made it at the same moment (seen on GlusterFS): that one sets it up
        return
    os.chmod(cache.root, (0o777 & ~umask) | stat.S_ISGID)


@contextlib.contextmanager
def shared_root_for_writing(cache: CacheDir) -> Iterator[None]:
    """Check that the cache dir can be written and create it shared (`make_shared_root`); a cache dir created
    here is removed again if nothing was compiled into it, so a failed first warm leaves nothing behind."""
    cache.require_writable()
    existed = cache.root.exists()
    make_shared_root(cache)
    try:
        yield
    finally:
        if not existed:
            cache.remove_if_empty()
