"""Everything a run writes into its output folder: intermediate and final LoRA files with their metadata, the
resumable state (on every save, on Cancel or any interrupt), previews. Only rank 0 writes (torchrun); a failed
write says what is kept."""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lora_train.dataset import LoraDataset
from lora_train.training.config import TrainConfig
from lora_train.training.distributed import Distributed
from lora_train.training.ema import ema_applied
from lora_train.training.host_api import Progress, TrainingError, TrainingHost, TrainingSession
from lora_train.training.lora_io import build_metadata, save_lora, training_metadata
from lora_train.training.previews import sample_path, write_previews
from lora_train.training.resume import ResumeState, check_compatible, load_state, prune_intermediate, state_path
from lora_train.training.resume import save_state as write_state
from lora_train.training.run import Run
from lora_train.training.tensorboard_log import TensorBoardLog, tensorboard_folder

if TYPE_CHECKING:
    from lora_train.training.data import TrainingData

log = logging.getLogger(__name__)

SaveFn = Callable[[Path, dict[str, torch.Tensor], dict[str, str]], None]


@contextlib.contextmanager
def explain_write_errors(path: Path, saved: list[Path], state_file: Path) -> Iterator[None]:
    """Turn a failed write of `path` (disk full, no permission) into a TrainingError that says what is kept."""
    try:
        yield
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        kept = f"the last good save {saved[-1].name} is intact" if saved else "nothing was saved before"
        resume = f"; {state_file.name} lets the next run resume" if state_file.is_file() else ""
        raise TrainingError(
            f"could not write {path.name} in {path.parent}: {reason}. Nothing half-written was left: {kept}{resume}. "
            "Free space there (or pick another output folder) and queue the run again."
        ) from exc


class RunFiles:
    """The output folder of one run: `<output_name>.safetensors`, `_sNNNNNN` saves, `.lora_state`, previews."""

    def __init__(
        self,
        cfg: TrainConfig,
        output_dir: Path,
        host: TrainingHost,
        dataset: LoraDataset,
        dist: Distributed,
        save: SaveFn | None = None,
    ):
        self.cfg, self.output_dir, self.host, self.dataset, self.dist = cfg, output_dir, host, dataset, dist
        self.save = dist.main_only(save or save_lora)
        self.save_state = dist.main_only(write_state)
        self.state_file = state_path(output_dir, cfg.output_name)
        self.saved: list[Path] = []
        self.started = time.time()
        self.data: TrainingData | None = None  # set once encoded: regularisation and bucket facts for metadata
        board_on = cfg.tensorboard and dist.is_main
        self.board = TensorBoardLog(tensorboard_folder(output_dir, cfg.output_name), board_on)

    def reporter(self, host: TrainingHost) -> Callable[[Progress], None]:
        """Where progress goes: the host (chart, progress bar, CLI log) and the TensorBoard events."""

        def report(progress: Progress) -> None:
            host.report(progress)
            self.board.progress(progress)

        return report

    def resume_state(self) -> ResumeState | None:
        """The state an interrupted run left, when `resume` is on and there is one (read before any encoding)."""
        return load_state(self.state_file) if self.cfg.resume and self.state_file.is_file() else None

    def resume(self, run: Run, state: ResumeState, steps: int) -> None:
        """Continue `run` from `state` after checking it was made for this model and these settings."""
        check_compatible(state, self.cfg, run.base_model, self.state_file)
        run.restore(state)
        log.info("resuming %s at step %d of %d", self.state_file.name, run.step, steps)

    def metadata(self, step: int, epoch: int) -> dict[str, str]:
        """The LoRA file's `ss_*` / `modelspec.*` / config metadata after `step` steps."""
        cfg = self.cfg
        data = self.data
        extra = training_metadata(
            cfg.to_dict(),
            reg_info=data.reg_info if data else None,
            num_reg_images=data.num_reg_images if data else 0,
            buckets=data.buckets if data else {},
        )
        return extra | build_metadata(
            cfg.to_dict(),
            base_model_name=self.host.base_model_name,
            architecture=self.host.architecture,
            network=cfg.network,
            rank=cfg.rank,
            alpha=cfg.alpha,
            steps=step,
            epochs=epoch,
            dataset=self.dataset,
            started_at=self.started,
            title=cfg.output_name,
            trigger_words=cfg.trigger_word,
        )

    @contextlib.contextmanager
    def state_kept_on_interrupt(self, run: Run, streams: tuple | None = None) -> Iterator[None]:
        """On Cancel, Ctrl-C or any error inside, write the resumable state (random streams rewound to `streams`)."""
        try:
            yield
        except BaseException:
            self.save_state(self.state_file, run.snapshot(self.cfg, streams))
            raise

    def save_intermediate(self, run: Run, session: TrainingSession) -> None:
        """`<name>_sNNNNNN.safetensors` and the resume state; older saves beyond `keep_last` pruned."""
        path = self.output_dir / f"{self.cfg.output_name}_s{run.step:06d}.safetensors"
        with explain_write_errors(path, self.saved, self.state_file):
            self.save(path, session.file_tensors(run.lora_tensors()), self.metadata(run.step, run.order.epoch))
            self.save_state(self.state_file, run.snapshot(self.cfg))
        self.saved.append(path)
        if self.dist.is_main:
            prune_intermediate(self.output_dir, self.cfg.output_name, self.cfg.keep_last)

    def write_previews(self, run: Run, session: TrainingSession, steps: int) -> None:
        """Sample the preview prompts with the LoRA as it is now (rank 0)."""
        preview = sample_path(self.output_dir, self.cfg.output_name, run.step, 0)
        with explain_write_errors(preview, self.saved, self.state_file), ema_applied(run.ema):
            paths = write_previews(session, self.host, run.adapter_sets, self.cfg, self.output_dir, run.step, steps)
        self.board.previews(run.step, paths)

    def save_final(self, tensors: dict[str, torch.Tensor], run: Run) -> tuple[Path, dict[str, str]]:
        """`<name>.safetensors`; the resume state is removed (the next run with this name starts fresh)."""
        metadata = self.metadata(run.step, run.order.epoch)
        lora_path = self.output_dir / f"{self.cfg.output_name}.safetensors"
        with explain_write_errors(lora_path, self.saved, self.state_file):
            self.save(lora_path, tensors, metadata)
        self.saved.append(lora_path)
        if self.dist.is_main:
            self.state_file.unlink(missing_ok=True)
        log.info("saved %s after %d steps in %.1fs", lora_path, run.step, time.time() - self.started)
        return lora_path, metadata
