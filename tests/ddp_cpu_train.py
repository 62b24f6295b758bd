"""`nnUNetv2_train ... -num_gpus N` on a machine without GPUs: nnU-Net's own DDP launcher and training.

Run as a script with nnUNetv2_train's arguments. nnU-Net's `run_training` spawns one process per rank and
each runs nnU-Net's `run_ddp` (training, then the final validation). Two CUDA calls are swapped, at module
level so that the spawned ranks (which import this file again, as `__mp_main__`) swap them too: the process
group uses gloo instead of NCCL, and `torch.cuda.set_device` does nothing. The trainer must keep DDP ranks
on the CPU, as `nnUNetTrainerCPUCompile` does.

This module must not bind the name `torch`: pickle finds `torch.contiguous_format` (which has no
`__module__`) by scanning sys.modules, `__mp_main__` comes first there, and inductor's FX-graph cache keys
pickle memory formats, so a `torch` global here would change every key of the spawned ranks
(`nnUNetv2_train`'s own script has none).
"""

from nnunetv2.run import run_training
from torch import cuda, distributed


def _gloo_process_group(rank: int, world_size: int) -> None:
    distributed.init_process_group("gloo", rank=rank, world_size=world_size)


def _no_device(device: object) -> None:
    """There is no GPU to select; the trainer keeps the rank on the CPU."""


run_training.setup_ddp = _gloo_process_group
cuda.set_device = _no_device

if __name__ == "__main__":
    run_training.run_training_entry()
