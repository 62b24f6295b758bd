"""A trainer that imports and plans like the CPU test trainer but fails in `initialize()`: what a warm job meets
on a node whose GPU, driver or install is broken, after `submit` checked everything on the login node."""

from warmer.demo.trainers.nnUNetTrainerCPUCompile import nnUNetTrainerCPUCompile_2it


class nnUNetTrainerTestFailsOnNode(nnUNetTrainerCPUCompile_2it):
    def initialize(self) -> None:
        raise RuntimeError("simulated node failure: this trainer cannot initialize here")
