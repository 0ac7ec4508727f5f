"""Opt-in regional `torch.compile` (the `compile` setting): each repeated block of the lent model (a UNet's
ResBlocks and transformers, a DiT's blocks) is compiled on its own, as diffusers' `compile_repeated_blocks` does.
Blocks of one class share their compiled code, so compiling costs about one block per kind, not the whole model.

Where compile cannot run (no torch.compile, a platform dynamo does not support, no working C++ compiler for the
CPU backend) one log line says so and the run trains eagerly; a block that fails to compile later falls back to
eager too (dynamo's `suppress_errors`, set for the run only): compile never stops a run midway.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch

from lora_train.training.checkpointing import checkpoint_units

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def compile_unavailable(device_type: str) -> str | None:
    """Why torch.compile cannot run on `device_type` here (None when a probe compiled and ran)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python/platform"
        probe = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2 + 1, dynamic=False)
        device = "cuda" if device_type == "cuda" else device_type
        out = probe(torch.ones(8, device=device))
        expected = torch.nn.functional.gelu(torch.ones(8, device=device)) * 2 + 1
        if not torch.allclose(out, expected):
            return "the compiled probe computed a wrong result"
    except Exception as exc:  # the backends raise many types (compiler missing, unsupported device, ...)
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


@contextlib.contextmanager
def compiled_blocks(root: torch.nn.Module, enabled: bool, device: torch.device) -> Iterator[int]:
    """Compile each of `root`'s repeated blocks for the duration (yields how many; 0 when off or unavailable);
    the blocks are uncompiled again afterwards."""
    if not enabled:
        yield 0
        return
    reason = compile_unavailable(device.type)
    if reason is not None:
        log.warning("compile is on but torch.compile is unavailable here (%s); training without it", reason)
        yield 0
        return
    import torch._dynamo as dynamo

    blocks = checkpoint_units(root)  # compiled one by one: the units gradient checkpointing recomputes
    for block in blocks:
        block.compile(dynamic=False)
    suppress, limit = dynamo.config.suppress_errors, dynamo.config.cache_size_limit
    dynamo.config.suppress_errors = True  # a block that fails to compile runs eagerly instead of stopping the run
    dynamo.config.cache_size_limit = max(limit, 64)  # one entry per block shape (and grad mode) is expected
    log.info("compile: %d blocks compiled regionally (the first steps are slower while they compile)", len(blocks))
    try:
        yield len(blocks)
    finally:
        dynamo.config.suppress_errors, dynamo.config.cache_size_limit = suppress, limit
        for block in blocks:
            block._compiled_call_impl = None  # what nn.Module.compile set: back to the plain call
