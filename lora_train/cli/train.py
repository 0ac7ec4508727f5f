"""`python -m lora_train train --config job.yaml [--set key=value ...] [--comfyui PATH] [--cpu]`.

The same core as the Train LoRA node: ComfyUI (found as a library) loads the checkpoint with its own loader, and
`lora_train.training.train_lora` trains. Multi-GPU: launch with `torchrun --nproc_per_node N -m lora_train train ...`;
each process takes its rows of every global batch of batch_size x N (see lora_train.training.distributed).
Exit codes: 0 = the LoRA was written; 2 = bad config, paths or install; 1 = training failed; 130 = interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_train.cli.config import ConfigError, LlmJob, RunPaths, TrainJob, load_job, settings_help

if TYPE_CHECKING:
    from lora_train.dataset import LoraDataset
    from lora_train.training import Distributed, Progress, TrainConfig, TrainingHost

log = logging.getLogger(__name__)
# Step lines go to the run's log file only; the terminal shows the tqdm bar instead.
progress_log = logging.getLogger("lora_train.progress")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` sub-command."""
    parser = subparsers.add_parser(
        "train",
        help="train a LoRA from a YAML config on a checkpoint, with ComfyUI's loaders (torchrun for multi-GPU)",
        description="Train a LoRA as the Train LoRA node does, from a config file. Write a starting config with "
        "`python -m lora_train config --print-defaults > my_lora.yaml` (or see configs/example_lora.yaml).\n"
        "Multi-GPU: torchrun --nproc_per_node N -m lora_train train --config my_lora.yaml; every process trains "
        "batch_size images per forward pass, so the effective batch per optimizer step is batch_size x "
        "gradient_accumulation x N. Only rank 0 writes files.\n\n" + settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="YAML", help="job config: TrainConfig keys + dataset/model/output paths")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set rank=8 (repeatable; wins over the file)")  # fmt: skip
    parser.add_argument("--comfyui", metavar="PATH", help="ComfyUI folder (default: $COMFYUI_PATH, or the "
                        "ComfyUI this extension is installed in)")  # fmt: skip
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--merge", action="store_true", help="model_type: causal_lm only: also write "
                        "<output_name>_merged, the base model with the adapter merged in")  # fmt: skip
    parser.set_defaults(func=run)


# ---- progress --------------------------------------------------------------------------------------------
class ProgressBar:
    """Progress to a tqdm bar (step, loss, it/s, ETA) and to the run's log file."""

    def __init__(self, show: bool = True):
        self.show = show
        self._bar: Any = None

    def report(self, progress: Progress) -> None:
        if not self.show:
            return
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=progress.total, unit="step", dynamic_ncols=True, file=sys.stderr)
        postfix = {"loss": f"{progress.loss:.4f}", "lr": f"{progress.lr:.3g}"}
        validation = ""
        if progress.validation_loss is not None:
            postfix["val"] = f"{progress.validation_loss:.4f}"
            validation = f" validation {progress.validation_loss:.6f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(progress.step - self._bar.n)
        progress_log.info(
            "step %d/%d loss %.6f smoothed %.6f%s lr %.3g elapsed %.1fs eta %.1fs",
            progress.step,
            progress.total,
            progress.loss,
            progress.smoothed_loss,
            validation,
            progress.lr,
            progress.elapsed_s,
            progress.eta_s,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class ProgressHost:
    """Wraps a `TrainingHost`: progress goes to a `ProgressBar`."""

    def __init__(self, host: TrainingHost, *, show: bool = True):
        self.host = host
        self.base_model_name = host.base_model_name
        self.architecture = host.architecture
        self.bar = ProgressBar(show)

    def encode_examples(self, dataset: LoraDataset, cfg: TrainConfig, **options: Any) -> list:
        started = time.time()
        examples = self.host.encode_examples(dataset, cfg, **options)
        log.info("encoded %d images and their captions in %.1fs", len(examples), time.time() - started)
        return examples

    def session(self, cfg: TrainConfig):
        return self.host.session(cfg)

    def check_cancel(self) -> None:
        self.host.check_cancel()

    def report(self, progress: Progress) -> None:
        self.bar.report(progress)

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def run_log(path: Path | None) -> Iterator[None]:
    """Append this run's log (settings, progress, the error if any) to `path`; None = no file (ranks > 0)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    progress_log.addHandler(handler)
    progress_log.setLevel(logging.INFO)
    progress_log.propagate = False
    try:
        yield
    finally:
        root.removeHandler(handler)
        progress_log.removeHandler(handler)
        handler.close()


# ---- inputs ----------------------------------------------------------------------------------------------
# ComfyUI models folder -> what a file there is called in messages.
MODEL_KINDS = {
    "checkpoints": "checkpoint",
    "diffusion_models": "diffusion model",
    "text_encoders": "text encoder",
    "vae": "VAE",
}


def resolve_base_model(name: str, folder: str = "checkpoints", setting: str = "base_model") -> Path:
    """A model path: `name` as a file, else a name in ComfyUI's models/<folder> (needs ComfyUI imported)."""
    from lora_train.host.model_files import find_model, folder_listing

    path = Path(name).expanduser()
    if path.is_file():
        return path
    found = find_model(name, folder)
    if found is not None:
        return found
    folders, known = folder_listing(folder)
    listed = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "") if known else "none"
    raise ConfigError(
        f"{setting} {name!r} is neither a file nor a {MODEL_KINDS[folder]} in ComfyUI's models/{folder} "
        f"({', '.join(folders)}); {folder} there: {listed}"
    )


def load_training_data(paths: RunPaths, cfg: TrainConfig) -> LoraDataset:
    """The dataset of `train_data_dir`, with `metadata_path`'s captions (when given) winning over the folder's."""
    from lora_train.dataset import DatasetConfig, DatasetError, load_dataset, read_metadata_csv

    dataset = load_dataset(DatasetConfig(path=paths.train_data_dir, resolution=cfg.resolution))
    if not paths.metadata_path:
        return dataset
    csv_path = Path(paths.metadata_path).expanduser()
    if not csv_path.is_file():
        raise DatasetError(f"metadata_path {str(csv_path)!r} does not exist; fix the path or leave it empty")
    rows = read_metadata_csv(csv_path, dataset.report)
    captions: dict[Path, str] = {}
    for bases in (Path(paths.train_data_dir), csv_path.parent):  # the CSV's own folder wins (Hugging Face layout)
        captions.update({(bases / name).resolve(): text for name, text in rows.items() if text})
    matched = 0
    for item in dataset.items:
        text = captions.get(item.path.resolve()) if item.path is not None else None
        if text is not None:
            item.caption, matched = text, matched + 1
    if rows and not matched:
        raise DatasetError(
            f"none of the {len(rows)} file_name entries in {csv_path} names an image in {paths.train_data_dir}; "
            "file_name is relative to the CSV's folder (or to train_data_dir)"
        )
    log.info("%s: captions for %d of %d images", csv_path, matched, len(dataset.items))
    return dataset


def load_extra_folder(folder: str, setting: str, cfg: TrainConfig) -> LoraDataset | None:
    """The dataset of an optional folder setting (`reg_data_dir`, `validation_data_dir`), or None when empty."""
    from lora_train.dataset import DatasetConfig, DatasetError, load_dataset

    if not folder.strip():
        return None
    if not Path(folder).expanduser().is_dir():
        raise DatasetError(f"{setting} {folder!r} does not exist or is not a folder; fix the path or leave it empty")
    return load_dataset(DatasetConfig(path=folder, resolution=cfg.resolution))


def with_cli_defaults(job: TrainJob) -> TrainConfig:
    """The job's settings, with TensorBoard on when the package is installed and the config does not say."""
    from lora_train.training import tensorboard_available

    if "tensorboard" not in job.sources and tensorboard_available():
        return job.train.replace(tensorboard=True)
    return job.train


def load_split_model(paths: RunPaths):
    """(MODEL, CLIP, VAE, diffusion model path) from the config's separate files."""
    from lora_train.host.model_files import CLIP_TYPE_BY_COUNT, clip_type, load_split_model

    unet = resolve_base_model(paths.base_model, "diffusion_models")
    names = [n.strip() for n in paths.text_encoders.split(",") if n.strip()]
    encoders = [str(resolve_base_model(n, "text_encoders", "text_encoders")) for n in names]
    clip_type_name = paths.clip_type or CLIP_TYPE_BY_COUNT.get(len(encoders), "")
    try:
        clip_type(clip_type_name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not paths.vae:
        raise ConfigError("a diffusion-model-only base_model needs its vae: set vae to the VAE file")
    vae_path = resolve_base_model(paths.vae, "vae", "vae")
    loaded = load_split_model(unet, encoders, clip_type_name, vae_path, paths.weight_dtype)
    return (*loaded, unet)


# ---- the command -----------------------------------------------------------------------------------------
def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _logged_run(
    train: Callable[[], int], log_path: Path, dist: Distributed, *, bad_input: tuple, interrupted: str
) -> int:
    """Run `train` with the log file open (rank 0) and turn what it raises into an exit code and one line on the
    terminal: bad input -> 2, a training error or anything unexpected -> 1 (traceback in the log), Ctrl-C -> 130."""
    from lora_train.training import TrainingError

    with run_log(log_path if dist.is_main else None):
        try:
            return train()
        except bad_input as exc:
            log.error("%s", exc)
            return _fail(str(exc), EXIT_BAD_INPUT)
        except TrainingError as exc:
            log.error("training failed: %s", exc)
            return _fail(f"training failed: {exc}", EXIT_FAILED)
        except KeyboardInterrupt:
            log.error("%s", interrupted)
            return _fail(interrupted, EXIT_INTERRUPTED)
        except Exception as exc:  # anything else: the traceback goes to the log file, one line to the terminal
            log.exception("training failed")
            where = f" (traceback in {log_path})" if dist.is_main else ""
            return _fail(f"training failed: {type(exc).__name__}: {exc}{where}", EXIT_FAILED)


def run(args: argparse.Namespace) -> int:
    """Validate the config, join the process group (torchrun), train; the exit code says whether a LoRA exists."""
    from lora_train.training import DistributedError, from_environment, pick_device_type, process_group

    try:
        job = load_job(args.config, [*args.overrides, *(["merge=true"] if args.merge else [])])
    except ConfigError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    if job.missing():
        keys = ", ".join(job.missing())
        return _fail(f"{keys} not set: add to the config file or pass --set {job.missing()[0]}=...", EXIT_BAD_INPUT)
    try:
        layout = from_environment()
        with process_group(layout, pick_device_type(args.cpu)) as dist:
            if not dist.is_main:
                logging.getLogger().setLevel(logging.WARNING)
            if isinstance(job, LlmJob):
                return _train_llm(job, args, dist)
            return _train(job, args, dist)
    except DistributedError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)


def _train(job: TrainJob, args: argparse.Namespace, dist: Distributed) -> int:
    from lora_train.dataset import DatasetError
    from lora_train.host.bootstrap import ComfyUINotFound, import_comfy
    from lora_train.settings import SettingsError
    from lora_train.training import pick_device_type

    try:
        comfy_root = import_comfy(args.comfyui, cpu=pick_device_type(args.cpu) == "cpu")
        from lora_train.host.model_files import models_folder

        output_dir = Path(job.paths.output_dir or models_folder("loras")).expanduser()
    except ComfyUINotFound as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    log_path = output_dir / f"{job.train.output_name}.log"
    return _logged_run(
        lambda: _train_logged(job, comfy_root, output_dir, dist),
        log_path,
        dist,
        bad_input=(ConfigError, DatasetError, SettingsError),
        interrupted="interrupted; no final LoRA was written",
    )


def _train_logged(job: TrainJob, comfy_root: Path, output_dir: Path, dist: Distributed) -> int:
    from lora_train.host.comfy_adapter import ComfyHost
    from lora_train.host.model_files import load_checkpoint
    from lora_train.training import train_lora

    cfg = with_cli_defaults(job)
    log.info("ComfyUI %s; config %s", comfy_root, {**job.to_dict(), **cfg.to_dict()})
    if dist.active:
        log.info(
            "%d processes: effective batch %d (batch_size %d x gradient_accumulation %d x %d processes)",
            dist.world_size,
            cfg.batch_size * cfg.gradient_accumulation * dist.world_size,
            cfg.batch_size,
            cfg.gradient_accumulation,
            dist.world_size,
        )
    dataset = load_training_data(job.paths, cfg)
    reg_dataset = load_extra_folder(job.paths.reg_data_dir, "reg_data_dir", cfg)
    validation_dataset = load_extra_folder(job.paths.validation_data_dir, "validation_data_dir", cfg)
    if job.paths.text_encoders:
        model, clip, vae, checkpoint = load_split_model(job.paths)
    else:
        checkpoint = resolve_base_model(job.paths.base_model)
        model, clip, vae = load_checkpoint(checkpoint)
    host = ProgressHost(ComfyHost(model, clip, vae), show=dist.is_main)
    host.base_model_name = checkpoint.name  # kohya's ss_sd_model_name is the checkpoint's file name
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # terminal log lines print above the bar instead of through it
            result = train_lora(cfg, dataset, host, output_dir, dist=dist, reg_dataset=reg_dataset,
                                validation_dataset=validation_dataset)  # fmt: skip
    finally:
        host.close()
    if not dist.is_main:
        return EXIT_OK
    if not result.lora_path.is_file():
        log.error("training finished but %s was not written", result.lora_path)
        return _fail(f"training finished but {result.lora_path} was not written", EXIT_FAILED)
    log.info("wrote %s (%d steps)", result.lora_path, result.steps)
    if result.best_validation is not None:
        log.info("best validation loss %.6f at step %d", result.best_validation[1], result.best_validation[0])
    print(result.lora_path)
    return EXIT_OK


# ---- language-model adapters (model_type: causal_lm) ---------------------------------------------------------
def _train_llm(job: LlmJob, args: argparse.Namespace, dist: Distributed) -> int:
    """Train a peft adapter; same exit codes, log file and progress bar as the image job. No ComfyUI needed.
    Every input is checked (`prepare`) before the log file or anything else is written."""
    from lora_train.llm import LlmDataError, LlmModelError, prepare
    from lora_train.settings import SettingsError
    from lora_train.training import ResumeError, pick_device_type

    device_type = pick_device_type(args.cpu)
    bad_input = (ConfigError, SettingsError, LlmDataError, LlmModelError, ResumeError)
    try:
        prepared = prepare(job.train, job.paths, device_type)
    except bad_input as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except Exception as exc:  # e.g. a tokenizer file transformers cannot read: one line, nothing written
        log.debug("checking the inputs failed", exc_info=True)
        return _fail(f"could not read the inputs: {type(exc).__name__}: {exc} (-v shows the traceback)", EXIT_FAILED)
    log_path = Path(job.paths.output_dir).expanduser() / f"{job.train.output_name}.log"
    return _logged_run(
        lambda: _train_llm_logged(job, prepared, device_type, dist),
        log_path,
        dist,
        bad_input=bad_input,
        interrupted="interrupted; no final adapter was written (the next run resumes)",
    )


def _train_llm_logged(job: LlmJob, prepared: Any, device_type: str, dist: Distributed) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from lora_train.llm import train_causal_lm

    log.info("config %s", job.to_dict())
    log.info("%s: %s", prepared.data.path, prepared.report.summary())
    if dist.active:
        cfg = job.train
        log.info("%d processes: effective batch %d (batch_size %d x gradient_accumulation %d x %d processes)",
                 dist.world_size, cfg.batch_size * cfg.gradient_accumulation * dist.world_size, cfg.batch_size,
                 cfg.gradient_accumulation, dist.world_size)  # fmt: skip
    bar = ProgressBar(show=dist.is_main)
    try:
        with logging_redirect_tqdm():
            result = train_causal_lm(
                job.train, job.paths, dist=dist, device_type=device_type, report=bar.report, prepared=prepared
            )
    finally:
        bar.close()
    if dist.is_main:
        print(result.adapter_dir)
        if result.merged_dir is not None:
            print(result.merged_dir)
    return EXIT_OK
