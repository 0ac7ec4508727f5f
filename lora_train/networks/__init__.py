"""Adapter modules (one per adapted Linear/Conv2d layer), one module per network family.

Each adapter holds only its own parameters and computes the branch it adds to a target layer's output; the
hooks that attach it and the kohya file layout live in :mod:`lora_train.network`.
"""
