"""Bundles: the closures and manifests of warm targets in one checksummed file, for nodes the shared cache does not
reach (container images, cloud pools, another site).

A bundle is a tar stream compressed with zstd, then a trailer line with the SHA-256 of every byte before it:

    [zstd( tar: bundle.json, inductor/..., manifests/... )] "\\nnnunet-warmer-bundle-sha256:<64 hex>\\n"

`bundle.json` (the first member) lists each target's manifest and fingerprint, and every other member's size and
SHA-256; manifests come last. zstd, measured on a 2d closure (9.7 MB of FX entries, kernels and generated code;
bench/bundle.py): 11.4x at level 3 in 0.02 s and 17.4x at level 10 in 0.06 s, against gzip's 4.7x in 0.15 s at its
default; bundles use level 10.

A bundle is code, so an import trusts nothing in it until all of it checked out: a first pass reads the whole
file, checks the trailer's hash, every member's type, path and checksum, and every manifest (it parses, it sits
where its target and fingerprint put it, its closure is in the bundle), writing nothing. The second pass writes
each entry atomically (temp file, checksum again, rename), keeps identical entries, and writes the manifests last,
under the shared publish lock, so that no `gc` deletes an entry between its check and its manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import zstandard

from warmer.cache.checksums import digest
from warmer.cache.files import atomic_file, fsync_folder
from warmer.cache.layout import CacheDir
from warmer.cache.locking import LockPolicy, publish_lock
from warmer.cache.manifest import Manifest, UnreadableManifestError
from warmer.errors import UserError
from warmer.report import Reporter
from warmer.values.fingerprint import HostEnvironment, fingerprint_id

BUNDLE_VERSION = 1
INDEX_NAME = "bundle.json"
TRAILER_PREFIX = b"\nnnunet-warmer-bundle-sha256:"
TRAILER_LENGTH = len(TRAILER_PREFIX) + 64 + 1
COMPRESSION_LEVEL = 10
CHUNK = 1 << 20
PROGRESS_EVERY = 256 << 20
TOP_FOLDERS = ("inductor", "manifests")


@dataclass(frozen=True)
class BundleTarget:
    """A target in a bundle: its manifest's path inside the bundle (relative to a cache dir) and fingerprint."""

    manifest: str
    label: str
    device: str
    fingerprint: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "label": self.label, "device": self.device,
                "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleTarget:
        return cls(str(data["manifest"]), str(data["label"]), str(data["device"]),
                   {str(k): str(v) for k, v in dict(data["fingerprint"]).items()})


@dataclass(frozen=True)
class BundleIndex:
    """`bundle.json`: the targets, and "size:sha256" of every other member, keyed by its path in a cache dir."""

    targets: list[BundleTarget]
    files: dict[str, str]
    created: str
    host: str

    @property
    def bytes(self) -> int:
        return sum(int(checksum.split(":", 1)[0]) for checksum in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        return {"bundle_version": BUNDLE_VERSION, "created": self.created, "host": self.host,
                "targets": [t.to_dict() for t in self.targets], "files": self.files}

    @classmethod
    def parse(cls, raw: bytes) -> BundleIndex:
        try:
            data = json.loads(raw)
            if data.get("bundle_version") != BUNDLE_VERSION:
                raise ValueError(f"bundle version {data.get('bundle_version')!r}, not {BUNDLE_VERSION}")
            return cls([BundleTarget.from_dict(t) for t in data["targets"]],
                       {str(k): str(v) for k, v in dict(data["files"]).items()}, str(data["created"]),
                       str(data["host"]))
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
            raise BundleError(f"its {INDEX_NAME} is not a bundle index ({e})") from None


class BundleError(ValueError):
    """What is wrong with a bundle; nothing was written."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    targets: list[BundleTarget]
    files: int
    content_bytes: int
    bundle_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.path), "targets": [t.to_dict() for t in self.targets], "files": self.files,
                "content_bytes": self.content_bytes, "bundle_bytes": self.bundle_bytes, "seconds": self.seconds}


@dataclass(frozen=True)
class ImportResult:
    index: BundleIndex
    written: int
    kept: int
    replaced: int
    written_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"targets": [t.to_dict() for t in self.index.targets], "files": len(self.index.files),
                "written": self.written, "kept": self.kept, "replaced": self.replaced,
                "written_bytes": self.written_bytes, "seconds": self.seconds}


class _Progress:
    """A line every PROGRESS_EVERY bytes, so a large bundle shows it is moving."""

    def __init__(self, verb: str, total: int, report: Reporter) -> None:
        self.verb, self.total, self.report, self.done, self.next = verb, total, report, 0, PROGRESS_EVERY

    def add(self, n: int) -> None:
        self.done += n
        if self.done >= self.next:
            self.next += PROGRESS_EVERY
            self.report(f"{self.verb}: {self.done >> 20} of {self.total >> 20} MiB")


class _HashingWriter(io.RawIOBase):
    """Passes writes on to `f` and hashes them: the trailer's hash of the compressed stream."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha = f, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.f.write(view)
        return len(view)


class _HashingReader(io.RawIOBase):
    """Reads `f` (up to `end` when given) and hashes what it reads: a file going into the bundle, or the bundle's
    body checked against its trailer; `drain` reads the rest, so the hash covers every byte."""

    def __init__(self, f: BinaryIO, end: int | None = None, progress: _Progress | None = None) -> None:
        self.f, self.left, self.progress, self.sha = f, end, progress, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = self.f.readinto(view if self.left is None else view[: min(len(view), self.left)]) or 0
        self.sha.update(view[:n])
        if self.left is not None:
            self.left -= n
        if self.progress is not None:
            self.progress.add(n)
        return n

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def write_bundle(cache: CacheDir, manifests: list[Manifest], to: Path, report: Reporter) -> ExportResult:
    """Write the manifests and their closures to `to` (a temp file first, renamed when complete)."""
    start = time.monotonic()
    files: dict[str, str] = {}
    for manifest in manifests:
        files.update(manifest.entries)
    manifest_bytes = {str(m.path.relative_to(cache.root)): json.dumps(m.to_dict(), indent=1, sort_keys=True).encode()
                      for m in manifests}
    for relative, raw in manifest_bytes.items():
        files[relative] = f"{len(raw)}:{hashlib.sha256(raw).hexdigest()}"
    targets = [BundleTarget(str(m.path.relative_to(cache.root)), m.target.label, m.target.device, m.fingerprint)
               for m in manifests]
    index = BundleIndex(targets, files, time.strftime("%Y-%m-%dT%H:%M:%S%z"), socket.gethostname())
    progress = _Progress("export", index.bytes, report)
    to.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(to) as f:
        hashing = _HashingWriter(f)
        compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, threads=-1, write_checksum=True)
        with compressor.stream_writer(hashing, closefd=False) as zstd, \
                tarfile.open(fileobj=zstd, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, INDEX_NAME, json.dumps(index.to_dict(), indent=1, sort_keys=True).encode())
            for relative in sorted(r for r in files if r not in manifest_bytes):
                _add_file(tar, cache.root / relative, relative, files[relative], progress)
            for relative, raw in manifest_bytes.items():
                _add_bytes(tar, relative, raw)
        f.write(TRAILER_PREFIX + hashing.sha.hexdigest().encode() + b"\n")
    return ExportResult(to, targets, len(files), index.bytes, to.stat().st_size, time.monotonic() - start)


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, raw: bytes) -> None:
    tar.addfile(_member(name, len(raw)), io.BytesIO(raw))


def _add_file(tar: tarfile.TarFile, path: Path, relative: str, checksum: str, progress: _Progress) -> None:
    size = int(checksum.split(":", 1)[0])
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size != size:
            raise UserError(f"{path} changed since its target was verified (size): warm the target, then export")
        checked = _HashingReader(f, progress=progress)
        tar.addfile(_member(relative, size), io.BufferedReader(checked, CHUNK))
    if f"{size}:{checked.sha.hexdigest()}" != checksum:
        raise UserError(f"{path} changed since its target was verified (checksum): warm the target, then export")


def _safe_name(name: str) -> str:
    """The member's path in a cache dir, or BundleError: only plain relative paths under inductor/ (not torch's
    locks) and manifests/, and the index."""
    if name == INDEX_NAME:
        return name
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or posixpath.normpath(name) != name or ".." in parts or \
            parts[0] not in TOP_FOLDERS or len(parts) < 2 or parts[:2] == ["inductor", "locks"]:
        raise BundleError(f"member {name!r} would land outside the cache's entries (absolute, '..' or another "
                          f"folder)")
    return name


def _members(path: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Each member's name and content, the bundle read once from start to end: every member's type and path checked
    on the way, and, once the last was read, the trailer's hash of every byte (BundleError for each)."""
    size = path.stat().st_size
    if size < TRAILER_LENGTH:
        raise BundleError("it is too short to be a bundle")
    with open(path, "rb") as f, _unpack_errors():
        reader = _HashingReader(f, size - TRAILER_LENGTH)
        stream = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(reader, CHUNK))
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = _safe_name(member.name)
                content = tar.extractfile(member) if member.isreg() else None
                if content is None:
                    raise BundleError(f"member {name!r} is not a regular file (a link, folder or device)")
                yield name, content
        reader.drain()
        f.seek(size - TRAILER_LENGTH)
        trailer = f.read()
    if trailer != TRAILER_PREFIX + reader.sha.hexdigest().encode() + b"\n":
        raise BundleError("its bytes do not match the SHA-256 it ends with (damaged or altered in transit)")


@contextlib.contextmanager
def _unpack_errors() -> Iterator[None]:
    """A corrupt stream fails wherever it is read (here, or in the caller reading a member): one BundleError."""
    try:
        yield
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
        raise BundleError(f"it does not unpack ({e})") from None


def _copy(source: IO[bytes], sink: Callable[[bytes], Any], progress: _Progress) -> str:
    sha, size = hashlib.sha256(), 0
    while chunk := source.read(CHUNK):
        sha.update(chunk)
        sink(chunk)
        size += len(chunk)
        progress.add(len(chunk))
    return f"{size}:{sha.hexdigest()}"


def check_bundle(path: Path, cache: CacheDir, report: Reporter) -> BundleIndex:
    """Read the whole bundle without writing: its index, every member against it, the manifests, the trailer."""
    index: BundleIndex | None = None
    seen: set[str] = set()
    progress = _Progress("checking", 0, report)
    with _unpack_errors():
        for name, content in _members(path):
            if index is None:
                if name != INDEX_NAME:
                    raise BundleError(f"its first member is {name!r}, not {INDEX_NAME}")
                index = BundleIndex.parse(content.read())
                progress.total = index.bytes
                continue
            if name == INDEX_NAME or name in seen or name not in index.files:
                raise BundleError(f"member {name!r} is {'repeated' if name in seen else 'not in its index'}")
            seen.add(name)
            raw = io.BytesIO() if name.startswith("manifests/") else None
            checksum = _copy(content, raw.write if raw is not None else (lambda _: None), progress)
            if checksum != index.files[name]:
                raise BundleError(f"member {name!r} does not match its checksum")
            if raw is not None:
                _check_manifest(name, raw.getvalue(), index, cache)
    if index is None:
        raise BundleError("it is empty")
    missing = sorted(set(index.files) - seen)
    if missing:
        raise BundleError(f"{len(missing)} files of its index are not in it, e.g. {missing[0]!r}")
    if {t.manifest for t in index.targets} != {n for n in index.files if n.startswith("manifests/")}:
        raise BundleError("its targets and its manifests differ")
    return index


def _check_manifest(name: str, raw: bytes, index: BundleIndex, cache: CacheDir) -> None:
    try:
        manifest = Manifest.from_json(cache.root / name, raw)
    except UnreadableManifestError as e:
        raise BundleError(f"member {name!r} is not a manifest ({e})") from None
    if manifest.path != cache.manifest_path(manifest.target.key, manifest.fingerprint_id) or \
            fingerprint_id(manifest.fingerprint) != manifest.fingerprint_id:
        raise BundleError(f"member {name!r} is not where its target and fingerprint put it")
    target = next((t for t in index.targets if t.manifest == name), None)
    if target is None or target.fingerprint != manifest.fingerprint:
        raise BundleError(f"member {name!r}: its fingerprint differs from the index's")
    outside = sorted(set(manifest.entries) - set(index.files))
    if outside:
        raise BundleError(f"member {name!r} lists {outside[0]!r}, which the bundle does not hold")
    if any(index.files.get(r) != c for r, c in manifest.entries.items()):
        raise BundleError(f"member {name!r} lists checksums that differ from the index's")


def import_bundle(path: Path, cache: CacheDir, index: BundleIndex, lock: LockPolicy, report: Reporter) -> ImportResult:
    """Write a checked bundle into the cache: entries first (atomically, identical ones kept), manifests last."""
    start = time.monotonic()
    root = Path(os.path.realpath(cache.root))
    progress = _Progress("import", index.bytes, report)
    written = kept = replaced = written_bytes = 0
    manifests: dict[str, bytes] = {}
    folders: set[Path] = set()
    with _unpack_errors():
        for name, content in _members(path):
            if name == INDEX_NAME:
                continue
            if name.startswith("manifests/"):
                manifests[name] = content.read()
                continue
            target = cache.root / name
            if target.exists() and _digest_or_none(target) == index.files[name]:
                kept += 1
                continue
            replaced += target.exists()
            if not Path(os.path.realpath(target.parent)).is_relative_to(root):
                raise UserError(f"{target.parent} leads outside the cache dir (a link): remove the link, then import")
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_entry(target, content, index.files[name], progress)
            folders.add(target.parent)
            written, written_bytes = written + 1, written_bytes + int(index.files[name].split(":", 1)[0])
    for folder in folders:
        fsync_folder(folder)
    with publish_lock(cache.publish_lock, lock, report, exclusive=False):
        for name, raw in manifests.items():
            manifest = Manifest.from_json(cache.root / name, raw)
            gone = [r for r in manifest.entries if not (cache.root / r).exists()]
            if gone:
                raise UserError(f"{gone[0]} went while importing (a gc or quarantine meanwhile): import again")
            manifest.write()
    return ImportResult(index, written, kept, replaced, written_bytes, time.monotonic() - start)


def _digest_or_none(path: Path) -> str | None:
    try:
        return digest(path)
    except OSError:
        return None


def _write_entry(target: Path, content: IO[bytes], checksum: str, progress: _Progress) -> None:
    with atomic_file(target) as out:
        if _copy(content, out.write, progress) != checksum:
            raise UserError(f"the bundle changed while importing ({target.name} differs from its checksum): "
                            f"import again")


def environment_differences(index: BundleIndex, host: HostEnvironment) -> dict[str, list[str]]:
    """Per target of the bundle, what differs between its fingerprint and this host (software, and the device of
    its kind where this host has one: a GPU target imported on a host without a GPU is checked there by `status`)."""
    found = {}
    for target in index.targets:
        parts = host.differences(target.fingerprint, target.device)
        if parts:
            found[target.label] = parts
    return found
