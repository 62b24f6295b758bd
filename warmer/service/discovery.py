"""Which datasets to keep warm, and when their plans changed: polled, because inotify does not see other hosts'
writes on NFS or Lustre."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from warmer.cache.files import file_identity
from warmer.values.plans import preprocessed_root

DATASET_FOLDER = re.compile(r"Dataset\d{3}_.+")


def find_datasets(plans_identifier: str, only: tuple[str, ...]) -> list[str]:
    """The datasets given (names or IDs, as -d takes them), or every dataset folder under nnUNet_preprocessed
    that holds `<plans_identifier>.json`."""
    if only:
        return list(only)
    root = preprocessed_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if DATASET_FOLDER.fullmatch(p.name) and (p / f"{plans_identifier}.json").is_file())


def plans_identity(dataset_name: str, plans_identifier: str) -> str:
    """The identity of what a dataset's targets are made from, its plans and its dataset.json, from a stat of each
    (no read): it changes whenever either is written or replaced."""
    parts = []
    for name in (f"{plans_identifier}.json", "dataset.json"):
        try:
            parts.append(file_identity(os.stat(preprocessed_root() / dataset_name / name)))
        except OSError:
            parts.append(None)
    return repr(parts)


@dataclass
class PlansWatch:
    """The last identity of its plans seen per dataset, so that a change and an error are each reported once."""

    seen: dict[str, str] = field(default_factory=dict)
    reported_errors: dict[str, str] = field(default_factory=dict)

    def changed(self, dataset: str, signature: str) -> str | None:
        """"found" or "changed" when the dataset is new or its plans differ from the last pass; else None."""
        before = self.seen.get(dataset)
        self.seen[dataset] = signature
        if before == signature:
            return None
        self.reported_errors.pop(dataset, None)
        return "found" if before is None else "changed"

    def first_report_of(self, dataset: str, error: str) -> bool:
        """True the first time this error is met for the dataset's current plans."""
        if self.reported_errors.get(dataset) == error:
            return False
        self.reported_errors[dataset] = error
        return True
