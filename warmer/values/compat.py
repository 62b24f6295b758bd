"""Which nnU-Net and torch versions the warmer replays faithfully, and a clear refusal for the others.

The replay drives nnU-Net's private-ish trainer API (`_do_i_compile`, `_get_deep_supervision_scales`,
`get_validation_transforms`, the predictor's `manual_initialization`) and counts torch's cache counters by
their names; these are the versions it is tested on (`pyproject.toml` pins the same ranges).
"""

from __future__ import annotations

from importlib import metadata

from warmer.errors import UserError

OLDEST_SUPPORTED = (2, 6)
NEWEST_SUPPORTED = (2, 8)
SUPPORTED_TEXT = "nnunetv2 2.6.x to 2.8.x"
TORCH_OLDEST, TORCH_NEWEST = (2, 7), (2, 14)
TORCH_PIP = "pip install 'torch>=2.7,<2.15'"


def installed_version(distribution: str) -> str:
    """The version of `distribution` on disk (its metadata; nothing imported), or "absent"."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def _supported_version(package: str, version: str | None, oldest: tuple[int, int], newest: tuple[int, int],
                       pip: str, not_installed: str, not_supported: str) -> str:
    """The installed (or given) version of `package`; a one-line UserError when it is missing, unreadable or
    outside oldest..newest (major, minor)."""
    if version is None:
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise UserError(not_installed) from None
    parts = version.split("+")[0].split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    except ValueError:
        raise UserError(f"cannot read the {package} version '{version}': install a release, {pip}") from None
    if not oldest <= major_minor <= newest:
        raise UserError(f"{package} {version} is not supported ({not_supported}): {pip}")
    return version


def check_nnunet_version(version: str | None = None) -> str:
    """Return the installed nnunetv2 version, or raise a UserError when it is missing or unsupported."""
    pip = "pip install 'nnunetv2>=2.6,<2.9'"
    return _supported_version("nnunetv2", version, OLDEST_SUPPORTED, NEWEST_SUPPORTED, pip,
                              f"nnunetv2 is not installed: {pip} ({SUPPORTED_TEXT})",
                              f"the warmer replays {SUPPORTED_TEXT}")


def check_torch_version(version: str | None = None) -> str:
    """Return the installed torch version, or raise a UserError when it is outside the supported range."""
    return _supported_version("torch", version, TORCH_OLDEST, TORCH_NEWEST, TORCH_PIP,
                              f"torch is not installed: {TORCH_PIP}", "the warmer is tested on torch 2.7 to 2.14")


def check_versions() -> None:
    check_nnunet_version()
    check_torch_version()
