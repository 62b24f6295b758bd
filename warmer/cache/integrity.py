"""Find damaged cache entries without compiling, and move them out of the way before anything loads them.

Every manifest records the size and SHA-256 of each file of its target's closure when it was published.
Comparing them with what is there now finds a truncated or garbled FX entry, AOTAutograd entry, kernel `.so`,
generated code or Triton file; a garbled manifest does not parse. The checks read only the manifests they are
given (`keys`): `warm` checks the targets it warms and `run` the target of its command, so damage reaches only
the targets whose closure holds the damaged file; `check` reads every manifest. `warm` moves damaged entries to
`quarantine/` first, so its re-verify misses and it compiles them again; `run` does the same before its job
starts (torch crashes a job that imports a garbled generated file), so jobs load only entries a verify has seen.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from warmer.cache.checksums import digest
from warmer.cache.digests import DigestIndex
from warmer.cache.layout import CacheDir
from warmer.cache.manifest import Manifest, UnreadableManifestError, read_manifest_files
from warmer.report import Reporter
from warmer.values.targets import TargetKey

EntryProblem = Literal["missing", "altered"]


@dataclass(frozen=True)
class Damage:
    """One damaged file (a cache entry or a manifest) and what is wrong with it."""

    path: Path
    problem: str

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "problem": self.problem}


def _entry_problem(cache: CacheDir, relative: str, expected: str, digests: dict[str, str]) -> EntryProblem | None:
    """The problem of one listed entry, or None; `digests` keeps each file's hash for the next manifest that
    lists it (manifests of targets that share files list them each)."""
    path = cache.root / relative
    if relative not in digests:
        try:
            digests[relative] = digest(path)
        except FileNotFoundError:
            return "missing"
    return "altered" if digests[relative] != expected else None


def manifest_damage(cache: CacheDir, manifest: Manifest, index: DigestIndex | None = None) -> list[Path]:
    """The entries of one manifest that are missing or no longer match their checksum; `index`: hashes this host
    computed before, reused for files whose identity is unchanged, the files looked at side by side (None: read
    every file)."""
    paths = [cache.root / relative for relative in manifest.entries]
    if index is None:
        digests: dict[str, str] = {}
        return [path for path, (relative, expected) in zip(paths, manifest.entries.items(), strict=True)
                if _entry_problem(cache, relative, expected, digests)]
    found = index.digests(paths)
    return [path for path, value, expected in zip(paths, found, manifest.entries.values(), strict=True)
            if value != expected]


def manifest_files(cache: CacheDir, keys: list[TargetKey] | None = None) -> list[Path]:
    """The manifest files of the targets `keys` (every fingerprint of each), or of the whole cache."""
    folders = [cache.manifests] if keys is None else [cache.manifest_folder(key) for key in dict.fromkeys(keys)]
    return sorted(path for folder in folders if folder.is_dir() for path in folder.rglob("*.json"))


def damaged_entries(cache: CacheDir, keys: list[TargetKey] | None = None) -> list[Damage]:
    """Each damaged file of the manifests of `keys` (default: every manifest) once, and every one of those
    manifests that lists one (its target is no longer proven warm); empty when their entries are intact."""
    return find_damage(cache, *read_manifest_files(manifest_files(cache, keys)))


def find_damage(cache: CacheDir, manifests: list[Manifest], unreadable: list[Path]) -> list[Damage]:
    """`damaged_entries` of manifests already read (`unreadable`: the manifest files that did not parse)."""
    found: dict[Path, str] = dict.fromkeys(unreadable, "manifest does not parse")
    digests: dict[str, str] = {}
    for manifest in manifests:
        for relative, expected in manifest.entries.items():
            path = cache.root / relative
            problem = None if path in found else _entry_problem(cache, relative, expected, digests)
            if problem == "missing":
                found[path] = f"missing (listed by {manifest.path.name})"
            elif problem == "altered":
                found[path] = f"size or checksum differs from {manifest.path.name} (truncated or garbled)"
    damaged = {str(p.relative_to(cache.root)) for p in found}
    for manifest in manifests:
        if damaged & set(manifest.entries):
            found[manifest.path] = "lists damaged entries: its target is no longer proven warm"
    return [Damage(path, problem) for path, problem in found.items()]


def quarantine(cache: CacheDir, damaged: list[Damage]) -> tuple[Path, int] | None:
    """Move the damaged files that exist under quarantine/<time>/, keeping their paths; returns the folder and
    how many files went there, None if none did. A file another process moved first is skipped."""
    folder = cache.new_quarantine_folder()
    moved = 0
    for item in damaged:
        if not item.path.exists():  # listed but missing: nothing to move
            continue
        destination = folder / item.path.relative_to(cache.root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(item.path, destination)
        except FileNotFoundError:
            continue
        moved += 1
    return (folder, moved) if moved else None


def listed_entries(cache: CacheDir) -> set[str]:
    """Every entry some readable manifest lists, read from the manifests now."""
    listed: set[str] = set()
    for path in manifest_files(cache):
        try:
            listed.update(Manifest.read(path).entries)
        except UnreadableManifestError:
            continue
    return listed


def set_aside(cache: CacheDir, report: Reporter, keys: list[TargetKey] | None = None) -> None:
    """Quarantine what `damaged_entries` finds for `keys` (default: every manifest), so nothing loads it again,
    and say what moved where."""
    moved = quarantine(cache, damaged_entries(cache, keys))
    if moved is not None:
        folder, count = moved
        report(f"moved {count} damaged files (cache entries and the manifests that list them) to {folder}; "
               f"they will be compiled again")


def cut_short(path: Path) -> bool:
    """A shared object whose ELF headers are missing or point past its end: what a linker killed mid-write leaves
    (the loader then refuses it as "file too short", or maps it and the process dies of SIGBUS)."""
    with open(path, "rb") as f:
        header = f.read(64)
        size = os.fstat(f.fileno()).st_size
        if len(header) < 52 or header[:4] != b"\x7fELF" or header[4] not in (1, 2) or header[5] not in (1, 2):
            return True
        order = "<" if header[5] == 1 else ">"
        if header[4] == 2:
            phoff, shoff = struct.unpack_from(order + "QQ", header, 0x20)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 0x36)
        else:
            phoff, shoff = struct.unpack_from(order + "II", header, 0x1C)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 0x2A)
        if max(phoff + phentsize * phnum, shoff + shentsize * shnum) > size:
            return True
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    wide = header[4] == 2
    for index in range(phnum):  # every segment the loader maps must lie inside the file
        entry = table[index * phentsize:(index + 1) * phentsize]
        offset, filesz = ((struct.unpack_from(order + "Q", entry, 8)[0], struct.unpack_from(order + "Q", entry, 32)[0])
                          if wide else
                          (struct.unpack_from(order + "I", entry, 4)[0], struct.unpack_from(order + "I", entry, 16)[0]))
        if offset + filesz > size:
            return True
    return False


def set_aside_cut_short_kernels(cache: CacheDir, report: Reporter) -> bool:
    """Quarantine every kernel (`.so`) under inductor/ that no manifest lists and that is cut short (`cut_short`).
    Torch builds a kernel at its final path and, once a file is there, loads it instead of building it again, so
    one left by a warm killed mid-link fails every later compile that needs it. A listed kernel is left alone:
    `set_aside` checks it against its checksum. True when something moved."""
    listed = listed_entries(cache)
    broken = []
    for path in sorted(cache.inductor.rglob("*.so")):
        relative = str(path.relative_to(cache.root))
        with contextlib.suppress(OSError):  # gone meanwhile
            if relative not in listed and cut_short(path):
                broken.append(Damage(path, "cut short: a linker killed mid-write"))
    moved = quarantine(cache, broken)
    if moved is None:
        return False
    folder, count = moved
    report(f"moved {count} kernels that a compiler killed mid-write left cut short to {folder}; they will be "
           f"built again")
    return True
