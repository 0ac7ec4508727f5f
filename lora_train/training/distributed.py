"""Data-parallel training over torch.distributed (launched by `torchrun` or `accelerate launch`).

How a run with N processes matches a single process with an N-times larger batch:

- Every rank draws the *global* batch identically: the same seeded data order (with batch_size x N rows), the
  same caption-dropout draws, noise and timesteps. Rank r then keeps rows r, r+N, r+2N, ... of it. So the
  examples, noise and timesteps of a global batch are exactly those of the single-process run.
- Each rank's loss is its rows' mean weighted by (its rows / global rows) x N; averaging the gradients over
  ranks then gives the gradient of the global batch mean, also for a short last batch of a bucket (a rank may
  even hold no rows at all; it contributes zeros).
- Gradients are averaged with one flat all-reduce per optimizer step (after gradient accumulation), which is
  what DistributedDataParallel does with `no_sync` during accumulation. DDP itself is not used: it wraps a module
  and hooks its `forward`, but our adapters are forward hooks held outside the host's model, and DDP would hang
  when a rank has no rows in a short batch. Adapter init uses the same seed on every rank and rank 0's values are
  broadcast once at the start (as DDP does), so every rank steps identical weights.
- Only rank 0 writes files and reports progress.

Effective batch per optimizer step = batch_size x gradient_accumulation x world_size.
Backend: nccl on CUDA (one GPU per process: cuda:LOCAL_RANK), gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

# torchrun and accelerate both set these for every worker.
ENV_RANK, ENV_WORLD_SIZE, ENV_LOCAL_RANK = "RANK", "WORLD_SIZE", "LOCAL_RANK"
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}


class DistributedError(RuntimeError):
    """The process group could not be set up; the message says what to change."""


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a data-parallel run. The default is a plain single-process run (all no-ops)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and reports progress (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def rows(self, global_rows: int) -> list[int]:
        """This rank's rows of a global batch of `global_rows`: r, r + N, r + 2N, ..."""
        return list(range(self.rank, global_rows, self.world_size))

    def loss_weight(self, local_rows: int, global_rows: int) -> float:
        """Factor on this rank's mean loss so the rank-average of gradients is the global batch mean's gradient."""
        return local_rows * self.world_size / global_rows

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over ranks (missing gradients count as zeros); one flat all-reduce."""
        if not self.active:
            return
        params = list(params)
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for param in params:
            count = param.numel()
            param.grad = flat[offset : offset + count].view_as(param).clone()
            offset += count

    def broadcast_parameters(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Copy rank 0's parameter values to every rank (they already agree by seed; this makes it certain)."""
        if not self.active:
            return
        with torch.no_grad():
            for param in params:
                torch.distributed.broadcast(param.data, src=0)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over ranks (a sync: used only when the loss is read back anyway)."""
        if not self.active:
            return value
        total = value.detach().clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total / self.world_size

    def main_only(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` on rank 0, a no-op elsewhere (file writes)."""
        if self.is_main:
            return fn

        def skipped(*args: Any, **kwargs: Any) -> None:
            return None

        return skipped


SINGLE_PROCESS = Distributed()


def from_environment(environ: dict[str, str] | None = None) -> Distributed:
    """The rank layout torchrun / accelerate put in the environment; a single process when they are absent."""
    env = os.environ if environ is None else environ
    if ENV_WORLD_SIZE not in env:
        return SINGLE_PROCESS
    try:
        world_size = int(env[ENV_WORLD_SIZE])
        rank = int(env.get(ENV_RANK, "0"))
        local_rank = int(env.get(ENV_LOCAL_RANK, str(rank)))
    except ValueError as exc:
        raise DistributedError(f"bad {ENV_RANK}/{ENV_WORLD_SIZE}/{ENV_LOCAL_RANK} in the environment: {exc}") from exc
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"{ENV_RANK}={rank} is not within {ENV_WORLD_SIZE}={world_size}")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)


def pick_device_type(cpu: bool) -> str:
    """`cuda` when a GPU is there and not refused, else `cpu`."""
    return "cpu" if cpu or not torch.cuda.is_available() else "cuda"


@contextlib.contextmanager
def process_group(layout: Distributed, device_type: str) -> Iterator[Distributed]:
    """Join the process group for `layout` (nothing to do for one process); leave it on exit.

    On CUDA each process takes GPU `LOCAL_RANK`; this must happen before ComfyUI picks its device, since
    ComfyUI uses the current CUDA device.
    """
    if not layout.active:
        yield layout
        return
    backend = BACKENDS[device_type]
    if device_type == "cuda":
        if layout.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"{ENV_LOCAL_RANK}={layout.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "use --nproc_per_node <= the GPU count"
            )
        torch.cuda.set_device(layout.local_rank)
    torch.distributed.init_process_group(backend=backend, rank=layout.rank, world_size=layout.world_size)
    log.info("rank %d of %d joined (%s)", layout.rank, layout.world_size, backend)
    try:
        yield layout
    finally:
        torch.distributed.destroy_process_group()
