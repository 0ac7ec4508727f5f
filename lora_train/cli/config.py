"""Training job configs (YAML + `--set key=value`) and `python -m lora_train config [--print-defaults | --check]`.

A job config is one flat mapping: every `TrainConfig` field plus the run's paths (`RunPaths`). Aliases from
both classes are accepted (the seed's `lora_rank`, kohya's `network_dim`, ...). Unknown keys are refused with
the nearest valid name; a bad value names the key, where it came from, the value and the bound.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lora_train.llm import LlmPaths, LlmTrainConfig
from lora_train.settings import Settings, SettingsError, setting
from lora_train.training import TrainConfig

SET_SOURCE = "--set"


class ConfigError(ValueError):
    """A config file or override is unusable; the message names the file or flag, the key and what to change."""


@dataclass
class RunPaths(Settings):
    """Where a command-line run reads its data and base model and writes its files (relative to the cwd)."""

    train_data_dir: str = setting(
        "",
        "Folder of training images, searched recursively: .txt sidecar and/or metadata.csv captions, kohya "
        "'N_name' repeat folders.",
    )
    metadata_path: str = setting(
        "",
        "Optional metadata.csv (columns file_name,text) whose captions win over the folder's own; file_name is "
        "relative to the CSV's folder or to train_data_dir. Empty = captions from the folder.",
    )
    base_model: str = setting(
        "",
        "Checkpoint to train on: a file path, or a file name in ComfyUI's models/checkpoints (as the Load "
        "Checkpoint node lists it). With text_encoders set: a diffusion-model-only file (models/diffusion_models, "
        "as Load Diffusion Model lists it), as Flux and SD3 are released.",
    )
    text_encoders: str = setting(
        "",
        "For a diffusion-model-only base_model: its text encoder files, comma-separated paths or names in "
        "models/text_encoders (Flux: clip_l, t5xxl; SD3: clip_l, clip_g, t5xxl). Empty = base_model is a checkpoint.",
    )
    clip_type: str = setting(
        "",
        "CLIP loader type of text_encoders, as ComfyUI's Load CLIP names it (flux, sd3, sdxl, stable_diffusion, ...); "
        "empty = flux for two files, stable_diffusion for one, sd3 for three.",
    )
    vae: str = setting("", "For a diffusion-model-only base_model: its VAE file (path or name in models/vae).")
    weight_dtype: str = setting(
        "default",
        "Storage dtype of a diffusion-model-only base_model, as Load Diffusion Model offers it (fp8_e4m3fn halves "
        "Flux's memory; compute and adapters stay bf16/fp32).",
        choices=("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"),
    )
    reg_data_dir: str = setting(
        "",
        "Optional folder of regularisation (class) images with their class captions ('a photo of a dog'), mixed in "
        "at reg_ratio with prior_loss_weight (kohya reg_data_dir). Empty = none.",
    )
    validation_data_dir: str = setting(
        "",
        "Optional folder of images to measure the validation loss on (besides any validation_split). Empty = none.",
    )
    output_dir: str = setting(
        "",
        "Folder for <output_name>.safetensors, the _sNNNNNN saves and <output_name>.log; empty = ComfyUI's "
        "models/loras.",
    )

    ALIASES: ClassVar[dict[str, str]] = {"pretrained_model_name_or_path": "base_model"}
    REQUIRED: ClassVar[tuple[str, ...]] = ("train_data_dir", "base_model")


JOB_CLASSES: tuple[type[Settings], ...] = (RunPaths, TrainConfig)
LLM_JOB_CLASSES: tuple[type[Settings], ...] = (LlmPaths, LlmTrainConfig)
# `model_type` picks the job: an image LoRA on a diffusion checkpoint (the default), or a language-model adapter.
MODEL_TYPES: dict[str, tuple[type[Settings], ...]] = {"diffusion": JOB_CLASSES, "causal_lm": LLM_JOB_CLASSES}
MODEL_TYPE_KEY = "model_type"


@dataclass
class TrainJob:
    """A resolved job: paths + training settings, and where each given key came from."""

    paths: RunPaths
    train: TrainConfig
    sources: dict[str, str] = field(default_factory=dict)  # setting name -> "file.yaml" or "--set"

    def to_dict(self) -> dict[str, Any]:
        """Every key of the job (paths first), as a config file would hold it."""
        return {**self.paths.to_dict(), **self.train.to_dict()}

    def missing(self) -> list[str]:
        """Required paths that are still empty."""
        return [name for name in RunPaths.REQUIRED if not getattr(self.paths, name).strip()]


@dataclass
class LlmJob:
    """A resolved language-model job (`model_type: causal_lm`): paths + adapter settings, and their sources."""

    paths: LlmPaths
    train: LlmTrainConfig
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.paths.to_dict(), **self.train.to_dict()}

    def missing(self) -> list[str]:
        return [name for name in LlmPaths.REQUIRED if not getattr(self.paths, name).strip()]


def _canonical(key: str, classes: tuple[type[Settings], ...] = JOB_CLASSES) -> tuple[type[Settings], str]:
    """The class and field name a config key means (aliases resolved), or ConfigError with the nearest name."""
    for cls in classes:
        name = cls.ALIASES.get(key, key)
        if name in {f.name for f in cls.field_specs()}:
            return cls, name
    candidates = [f.name for cls in classes for f in cls.field_specs()]
    candidates += [alias for cls in classes for alias in cls.ALIASES]
    hint = difflib.get_close_matches(str(key), candidates, n=1, cutoff=0.5)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(f"unknown setting {key!r}{extra} (python -m lora_train config --print-defaults lists them all)")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file (an empty file is an empty mapping)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected 'key: value' lines at the top level, got a {type(values).__name__}")
    return values


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`["rank=8", "trigger_word=a b"]` -> {"rank": "8", ...}; values stay strings (the settings coerce them)."""
    overrides: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{SET_SOURCE} {pair!r}: expected KEY=VALUE, e.g. --set rank=8")
        overrides[key.strip()] = value
    return overrides


def model_type_of(layers: list[tuple[str, dict[str, Any]]]) -> str:
    """The job's `model_type` (the last layer that sets it wins; default diffusion), checked."""
    model_type, source = "diffusion", ""
    for layer_source, mapping in layers:
        if MODEL_TYPE_KEY in mapping:
            model_type, source = str(mapping[MODEL_TYPE_KEY]), layer_source
    if model_type not in MODEL_TYPES:
        hint = difflib.get_close_matches(model_type, MODEL_TYPES, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{source}: model_type must be one of {', '.join(MODEL_TYPES)}; got {model_type!r}{extra}")
    return model_type


def build_job(layers: list[tuple[str, dict[str, Any]]]) -> TrainJob | LlmJob:
    """Merge (source, mapping) layers, later ones winning, and validate them into a `TrainJob` (or an `LlmJob` for
    `model_type: causal_lm`)."""
    model_type = model_type_of(layers)
    classes = MODEL_TYPES[model_type]
    if model_type == "diffusion":  # the image job has no model_type field: the key only selects it
        layers = [(source, {k: v for k, v in mapping.items() if k != MODEL_TYPE_KEY}) for source, mapping in layers]
    chosen: dict[str, tuple[type[Settings], Any, str, str]] = {}  # name -> (class, value, key as given, source)
    for source, mapping in layers:
        seen: dict[str, str] = {}
        for key, value in mapping.items():
            try:
                cls, name = _canonical(str(key), classes)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            if name in seen:
                raise ConfigError(f"{source}: setting {name!r} given twice (as {seen[name]!r} and {key!r})")
            seen[name] = str(key)
            chosen[name] = (cls, value, str(key), source)
    built: dict[type[Settings], Settings] = {}
    for cls in classes:
        values = {name: value for name, (owner, value, _, _) in chosen.items() if owner is cls}
        try:
            built[cls] = cls.from_dict(values)
        except SettingsError as exc:
            name = str(exc).split(" ", 1)[0]
            if name not in chosen:
                raise ConfigError(str(exc)) from None
            _, value, key, source = chosen[name]
            given = f"{key} (= {name}): " if key != name else ""
            # YAML 1.1 reads unquoted yes/no/on/off as booleans: `mixed_precision: no` arrives as False.
            hint = f' (YAML reads an unquoted yes/no/on/off as true/false: quote it, e.g. {key}: "no")'
            raise ConfigError(f"{source}: {given}{exc}{hint if isinstance(value, bool) else ''}") from None
    sources = {name: source for name, (_, _, _, source) in chosen.items()}
    job_class = LlmJob if model_type == "causal_lm" else TrainJob
    return job_class(built[classes[0]], built[classes[1]], sources)  # type: ignore[arg-type]


def load_job(config_path: str | Path | None, overrides: list[str] = ()) -> TrainJob | LlmJob:
    """A job from an optional YAML file plus `--set KEY=VALUE` overrides (which win)."""
    layers = []
    if config_path is not None:
        layers.append((str(config_path), read_config_file(config_path)))
    layers.append((SET_SOURCE, parse_overrides(list(overrides))))
    return build_job(layers)


# ---- help and defaults ------------------------------------------------------------------------------------
def _bounds(spec) -> str:
    meta = spec.metadata
    if meta.get("choices"):
        return "one of: " + ", ".join(meta["choices"])
    if meta.get("min") is not None or meta.get("max") is not None:
        return f"range: {meta.get('min')} .. {meta.get('max')}"
    return ""


def aliases_text(model_type: str = "diffusion") -> str:
    """`alias -> name` for every accepted alias (documented in --help and --print-defaults)."""
    classes = MODEL_TYPES[model_type]
    return ", ".join(f"{alias} -> {name}" for cls in classes for alias, name in sorted(cls.ALIASES.items()))


def defaults_yaml(model_type: str = "diffusion") -> str:
    """A complete config (every key at its default) with its help and bounds as comments: a valid config file."""
    import yaml

    lines = [
        "# comfyui-lora-train job config: every key, at its default. Paths are relative to the working directory.",
        f"# Accepted aliases: {aliases_text(model_type)}.",
    ]
    for cls in MODEL_TYPES[model_type]:
        lines += ["", f"# ---- {cls.__name__} " + "-" * 60]
        instance = cls()
        for spec in cls.field_specs():
            lines.append("")
            lines += textwrap.wrap(spec.metadata["help"], 110, initial_indent="# ", subsequent_indent="# ")
            if _bounds(spec):
                lines.append(f"# {_bounds(spec)}")
            dumped = yaml.safe_dump({spec.name: getattr(instance, spec.name)}, default_flow_style=True, width=1000)
            lines.append(dumped.strip()[1:-1])  # `{key: value}` -> `key: value`
    return "\n".join(lines) + "\n"


def settings_help() -> str:
    """Every job key with default, bounds and help, for `train --help`."""
    return (
        "Config keys (YAML file or --set KEY=VALUE):\n\n"
        + RunPaths.describe()
        + "\n"
        + TrainConfig.describe()
        + "\n\nAliases: "
        + aliases_text()
        + "\n\nmodel_type: causal_lm makes it a language-model adapter job (peft LoRA/DoRA on a local Hugging Face "
        "model folder, .jsonl data); its keys: python -m lora_train config --print-defaults --model-type causal_lm"
    )


# ---- the `config` command ---------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `config` sub-command."""
    parser = subparsers.add_parser(
        "config",
        help="print every training setting with defaults and bounds, or check a config file",
        description="Print a complete, commented config at its defaults (--print-defaults), or validate a config "
        "and print it fully resolved (--check). Settings:\n\n" + settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--print-defaults", action="store_true", help="every key at its default, as commented YAML")
    group.add_argument("--check", metavar="YAML", help="validate this config and print every key as resolved")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key (with --check); repeatable")  # fmt: skip
    parser.add_argument("--model-type", choices=list(MODEL_TYPES), default="diffusion",
                        help="with --print-defaults: the keys of this kind of job")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print defaults, or the resolved config; exit code 2 with the message for a bad config."""
    if args.print_defaults:
        sys.stdout.write(defaults_yaml(args.model_type))
        return 0
    import yaml

    try:
        job = load_job(args.check, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(job.to_dict(), sort_keys=False))
    for name in job.missing():
        print(f"note: {name} is not set yet (needed by train)", file=sys.stderr)
    return 0
