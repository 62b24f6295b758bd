"""Stage 1: read a dataset's plans and dataset.json through nnU-Net's own PlansManager, with user-facing errors.

Also the facts about a target that come from nnU-Net rather than torch: the trainer class (found as nnU-Net finds it),
the hash of its source and of the plans it trains on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmer.errors import UserError


@dataclass
class DatasetPlans:
    """A dataset's plans file and dataset.json, opened through nnU-Net's PlansManager."""

    dataset_name: str
    plans_identifier: str
    plans_file: Path
    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    manager: Any = field(repr=False)

    def configuration(self, name: str) -> Any:
        try:
            return self.manager.get_configuration(name)
        except KeyError as e:
            raise UserError(
                f"plans {self.plans_file} configuration '{name}' is missing key {e}: "
                f"re-run nnUNetv2_plan_and_preprocess -d {self.dataset_name}"
            ) from None

    def label_manager(self) -> Any:
        try:
            return self.manager.get_label_manager(self.dataset_json)
        except (KeyError, TypeError, AssertionError) as e:
            raise UserError(
                f"dataset.json of {self.dataset_name} has no usable 'labels' ({e}): fix dataset.json in "
                f"nnUNet_raw and re-run nnUNetv2_plan_and_preprocess"
            ) from None

    def num_input_channels(self, configuration: str) -> int:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        if not (self.dataset_json.get("channel_names") or self.dataset_json.get("modality")):
            raise UserError(
                f"dataset.json of {self.dataset_name} has no 'channel_names': add them and re-run "
                f"nnUNetv2_plan_and_preprocess"
            )
        return determine_num_input_channels(self.manager, self.configuration(configuration), self.dataset_json)


def preprocessed_root() -> Path:
    value = os.environ.get("nnUNet_preprocessed")
    if not value:
        raise UserError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/nnUNet_preprocessed")
    return Path(value)


def resolve_dataset_name(dataset: str) -> str:
    """Accept `4`, `004` or `Dataset004_Hippocampus`, the way nnU-Net's `-d` does."""
    root = preprocessed_root()
    if dataset.startswith("Dataset"):
        name = dataset
    else:
        try:
            dataset_id = int(dataset)
        except ValueError:
            raise UserError(f"dataset '{dataset}' is neither an ID nor a DatasetXXX_Name: pass -d 4 or "
                            f"-d Dataset004_Name") from None
        prefix = f"Dataset{dataset_id:03d}_"
        found = sorted(p.name for p in root.glob(prefix + "*") if p.is_dir()) if root.is_dir() else []
        if len(found) != 1:
            what = "no" if not found else "more than one"
            raise UserError(f"{what} dataset with ID {dataset_id} in nnUNet_preprocessed={root}: run "
                            f"nnUNetv2_plan_and_preprocess -d {dataset_id} or fix nnUNet_preprocessed")
        name = found[0]
    if not (root / name).is_dir():
        raise UserError(f"dataset {name} not found in nnUNet_preprocessed={root}: run "
                        f"nnUNetv2_plan_and_preprocess for it or fix nnUNet_preprocessed")
    return name


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: {fix}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}): {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} is not a JSON object: {fix}")
    return data


def load_plans(dataset: str, plans_identifier: str = "nnUNetPlans") -> DatasetPlans:
    """Open plans and dataset.json the way `get_trainer_from_args` does, with user-facing errors."""
    name = resolve_dataset_name(dataset)
    folder = preprocessed_root() / name
    fix = f"run nnUNetv2_plan_and_preprocess -d {name} (or pass the right -p)"
    plans_file = folder / f"{plans_identifier}.json"
    plans = _read_json(plans_file, "plans file", fix)
    dataset_json = _read_json(folder / "dataset.json", "dataset.json", fix)
    if not isinstance(plans.get("configurations"), dict) or not plans["configurations"]:
        raise UserError(f"plans file {plans_file} has no 'configurations': {fix}")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        manager = PlansManager(plans)
    except (KeyError, TypeError) as e:
        raise UserError(f"plans file {plans_file} is missing key {e}: {fix}") from None
    return DatasetPlans(name, plans_identifier, plans_file, plans, dataset_json, manager)


def resolve_configurations(dp: DatasetPlans, requested: list[str] | None) -> list[str]:
    available = list(dp.plans["configurations"])
    if not requested:
        return available
    for name in requested:
        if name not in available:
            raise UserError(f"unknown configuration '{name}' in {dp.plans_file.name}: choose from "
                            f"{', '.join(available)}")
    return list(dict.fromkeys(requested))


@functools.cache
def find_trainer_class(trainer: str) -> type:
    """nnU-Net's own trainer lookup, without its chatter: its package, then `nnUNet_extTrainer` (nnunetv2 2.8 on;
    earlier versions look in their own package only).

    Cached: the lookup imports every trainer module, and each target's fingerprint asks for it again."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            found = _in_ext_trainer_folders(trainer) or _nnunet_trainer_lookup()(trainer)
    except (RuntimeError, AssertionError):
        found = None
    except Exception as e:  # a module of a trainer folder that does not import: the search imports every one
        broken = _broken_trainer_file(e)
        if broken is None:
            raise
        raise UserError(f"{broken} does not import ({type(e).__name__}: {_one_line(e)}): fix that file or move it "
                        f"out of the trainer folders (nnUNet_extTrainer); nnU-Net imports every file there to find "
                        f"-tr {trainer}") from None
    if found is None:
        raise UserError(f"unknown trainer '{trainer}': check -tr, or put its folder in nnUNet_extTrainer "
                        f"(nnunetv2 2.6: in nnunetv2/training/nnUNetTrainer)")
    return found


def _broken_trainer_file(error: Exception) -> str | None:
    """The file outside nnU-Net and the warmer whose import raised `error` during the trainer search (the user's
    trainer module), or None when the error came from elsewhere."""
    import traceback

    import nnunetv2

    ours = (str(Path(nnunetv2.__path__[0]).parent), str(Path(__file__).parent.parent))
    files = [frame.filename for frame in traceback.extract_tb(error.__traceback__)]
    if isinstance(error, SyntaxError) and error.filename:
        files.append(error.filename)
    user_files = [f for f in files if f.endswith(".py") and not f.startswith(ours) and not f.startswith("<")]
    return user_files[-1] if user_files else None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300]


def _in_ext_trainer_folders(trainer: str) -> type | None:
    """A trainer that no file of nnU-Net's trainer package defines, found by nnU-Net's own search of the
    `nnUNet_extTrainer` folders alone (nnunetv2 2.8). nnU-Net searches its package first by importing every
    trainer module (2.25 s of the 3.7 s a `status` took here), and that pass cannot find a class the package does
    not define. None when the package defines it, on nnunetv2 before 2.8, or when nothing is found: then
    nnU-Net's full search decides."""
    folders = [f for f in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if f.strip() and os.path.isdir(f)]
    if not folders:
        return None
    try:
        import nnunetv2.utilities.find_objects  # noqa: F401 (2.8 on: nnU-Net itself searches nnUNet_extTrainer)
        from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    except ImportError:
        return None
    import nnunetv2

    definition = re.compile(rf"^class\s+{re.escape(trainer)}\b", re.MULTILINE)
    package = Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"
    if any(definition.search(path.read_text(errors="replace")) for path in package.rglob("*.py")):
        return None
    for folder in folders:
        found = recursive_find_python_class(folder, trainer, None, base_folder=folder,
                                            cleanup_imports_from_base_folder=True)
        if found is not None:
            from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

            return found if isinstance(found, type) and issubclass(found, nnUNetTrainer) else None
    return None


def _nnunet_trainer_lookup() -> Any:
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        return recursive_find_trainer_class_by_name
    except ImportError:
        import nnunetv2
        from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

        folder = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
        return lambda name: recursive_find_python_class(folder, name, "nnunetv2.training.nnUNetTrainer")


def trainer_source_hash(trainer_class: type) -> str:
    """Hash of the source of every trainer class outside nnunetv2 itself (its version covers the rest)."""
    digest = hashlib.sha256()
    for cls in trainer_class.__mro__:
        module = getattr(cls, "__module__", "") or ""
        if module.startswith(("nnunetv2.", "builtins")) or cls is object:
            continue
        try:
            digest.update(Path(inspect.getfile(cls)).read_bytes())
        except (TypeError, OSError):
            digest.update(module.encode() + b"." + cls.__qualname__.encode())
    return digest.hexdigest()[:16]


def plans_hash(dp: DatasetPlans, configuration: str) -> str:
    """Hash of what the graphs depend on: the resolved configuration plus labels and channels."""
    relevant = {
        "configuration": dp.configuration(configuration).configuration,
        "labels": dp.dataset_json.get("labels"),
        "regions_class_order": dp.dataset_json.get("regions_class_order"),
        "channels": dp.dataset_json.get("channel_names") or dp.dataset_json.get("modality"),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]
