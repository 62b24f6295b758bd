"""nnunet-warmer: precompile nnU-Net v2's torch.compile graphs into a shared cache before training starts."""

__version__ = "0.1.0"
