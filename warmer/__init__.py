"""nnunet-warmer: precompile nnU-Net v2's torch.compile graphs into a shared cache before training starts."""

from pathlib import Path

__version__ = "0.1.0"

#: nnUNet_extTrainer folder with the shipped trainers that let nnU-Net compile on CPU (tests, demo, benchmarks).
CPU_TRAINERS_DIR = Path(__file__).parent / "trainers"
