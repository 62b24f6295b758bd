"""The CPU test trainer under another name: the same network, loss and shapes, so the same graphs. A second target
whose closure is the first's, for the tests where two targets share every file (gc while a warm runs)."""

from warmer.demo.trainers.nnUNetTrainerCPUCompile import nnUNetTrainerCPUCompile_2it


class nnUNetTrainerTestTwin(nnUNetTrainerCPUCompile_2it):
    pass
