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


def check_nnunet_version(version: str | None = None) -> str:
    """Return the installed nnunetv2 version, or raise a UserError when it is missing or unsupported."""
    if version is None:
        try:
            version = metadata.version("nnunetv2")
        except metadata.PackageNotFoundError:
            raise UserError(f"nnunetv2 is not installed: pip install 'nnunetv2>=2.6,<2.9' ({SUPPORTED_TEXT})") from None
    parts = version.split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    except ValueError:
        raise UserError(f"cannot read the nnunetv2 version '{version}': install a release, "
                        f"pip install 'nnunetv2>=2.6,<2.9'") from None
    if not OLDEST_SUPPORTED <= major_minor <= NEWEST_SUPPORTED:
        raise UserError(f"nnunetv2 {version} is not supported (the warmer replays {SUPPORTED_TEXT}): "
                        f"pip install 'nnunetv2>=2.6,<2.9'")
    return version


def check_torch_version(version: str | None = None) -> str:
    """Return the installed torch version, or raise a UserError when it is outside the supported range."""
    if version is None:
        try:
            version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            raise UserError(f"torch is not installed: {TORCH_PIP}") from None
    parts = version.split("+")[0].split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    except ValueError:
        raise UserError(f"cannot read the torch version '{version}': install a release, {TORCH_PIP}") from None
    if not TORCH_OLDEST <= major_minor <= TORCH_NEWEST:
        raise UserError(f"torch {version} is not supported (the warmer is tested on torch 2.7 to 2.14): {TORCH_PIP}")
    return version


def check_versions() -> None:
    check_nnunet_version()
    check_torch_version()
