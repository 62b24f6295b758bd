"""Which nnU-Net versions the warmer replays faithfully, and a clear refusal for the others.

The replay drives nnU-Net's private-ish trainer API (`_do_i_compile`, `_get_deep_supervision_scales`,
`get_validation_transforms`, the predictor's `manual_initialization`); these are the versions it is tested on.
"""

from __future__ import annotations

from importlib import metadata

from warmer.errors import UserError

OLDEST_SUPPORTED = (2, 6)
NEWEST_SUPPORTED = (2, 8)
SUPPORTED_TEXT = "nnunetv2 2.6.x to 2.8.x"


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
