"""Byte counts as people write them on a command line and read them in a table.

Decimal units (K, M, G, T: powers of 1000) and binary ones (Ki, Mi, Gi, Ti: powers of 1024), an optional trailing
"B", as ccache's `--max-size` takes them; a bare number is bytes. Printed sizes are binary, as `du -h` prints them.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in "500G", "1.5Ti", "800MB", "4096"; ValueError for anything else."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 500G, 1.5Ti, 800M, 4096)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def format_size(n: float) -> str:
    """"812 B", "3.4 MiB", "1.2 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
