"""The demo and what it shares with the tests and benchmarks: a synthetic dataset, trainers that compile on CPU."""

from pathlib import Path

#: nnUNet_extTrainer folder with the shipped trainers that let nnU-Net compile on CPU (tests, demo, benchmarks).
CPU_TRAINERS_DIR = Path(__file__).parent / "trainers"
