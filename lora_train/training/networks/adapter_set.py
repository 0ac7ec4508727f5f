"""Adapter sets: find the layers to adapt, attach adapters as forward hooks, read and write kohya tensors.

Adapters live *beside* the model, never inside it: each target layer gets a forward hook that adds the
adapter's branch to its output. The host model's module tree, parameters and state_dict keys stay untouched
(peft-style module replacement renames keys and breaks ComfyUI's LoRA patching; see shared/HOST.md), LoRAs
ComfyUI already patched into the weights keep working, and `detach()` restores the exact base output.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from lora_train.training.networks.base import Adapter, AdapterSpec, is_adaptable
from lora_train.training.networks.lora import DoRAAdapter, LoConAdapter, LoRAAdapter
from lora_train.training.networks.lycoris import LoHaAdapter, LoKrAdapter

__all__ = [
    "NETWORKS",
    "AdapterSet",
    "AdapterSpec",
    "find_targets",
    "kohya_te_prefix",
    "kohya_unet_prefix",
]

log = logging.getLogger(__name__)

NETWORKS: dict[str, type[Adapter]] = {
    "lora": LoRAAdapter,
    "locon": LoConAdapter,
    "dora": DoRAAdapter,
    "loha": LoHaAdapter,
    "lokr": LoKrAdapter,
}


def network_class(name: str) -> type[Adapter]:
    """The adapter class registered under `name`; unknown names list the known ones."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; choose one of: {', '.join(NETWORKS)}") from None


def find_targets(root: nn.Module, include: Callable[[str, nn.Module], bool]) -> dict[str, nn.Module]:
    """Module path -> module for every nn.Linear / nn.Conv2d (subclasses too) under `root` that `include` accepts.

    Grouped convolutions and non-zero padding modes are never returned: no adapter can mirror them.
    """
    return {
        name: module
        for name, module in root.named_modules()
        if name and isinstance(module, nn.Linear | nn.Conv2d) and is_adaptable(module) and include(name, module)
    }


def kohya_unet_prefix(module_path: str) -> str:
    """kohya name of a UNet layer.

    "diffusion_model.input_blocks.1.1.proj_in" -> "lora_unet_input_blocks_1_1_proj_in";
    a leading "diffusion_model." is dropped.
    """
    path = module_path.removeprefix("diffusion_model.")
    return "lora_unet_" + path.replace(".", "_")


def kohya_te_prefix(module_path: str, te_index: int | None = None) -> str:
    """kohya name of a text-encoder layer; `te_index` 1/2 gives SDXL's "lora_te1_"/"lora_te2_".

    "transformer.text_model.encoder.layers.0.self_attn.q_proj"
    -> "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    (ComfyUI's leading "clip_l." / "clip_g." and the "transformer." wrapper are dropped).
    """
    path = module_path
    for wrapper in ("clip_l.", "clip_g.", "clip_h.", "transformer."):
        path = path.removeprefix(wrapper)
    stem = "lora_te_" if te_index is None else f"lora_te{te_index}_"
    return stem + path.replace(".", "_")


class AdapterSet(nn.Module):
    """One adapter per target layer, attached to the host model as forward hooks.

    `parameters()` yields only adapter parameters. `multiplier` scales every branch (like a LoRA strength);
    `enabled = False` makes the hooks pass the base output through. Use `attach()` / `detach()` in try/finally,
    or `with adapters.attached(): ...`.
    """

    def __init__(self, spec: AdapterSpec, targets: dict[str, nn.Module], prefixes: dict[str, str],
                 adapters: dict[str, Adapter]):  # fmt: skip
        super().__init__()
        self.spec = spec
        self.prefixes = dict(prefixes)  # module path -> kohya prefix
        self.adapters = nn.ModuleDict({prefixes[path]: adapters[path] for path in targets})  # kohya prefix keys
        # Plain dict, not submodules: the host's layers must not show up in parameters() or state_dict().
        self._targets: dict[str, nn.Module] = dict(targets)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.enabled = True
        self.multiplier = 1.0
        self.skipped: list[str] = []

    @classmethod
    def create(
        cls,
        targets: dict[str, nn.Module],
        spec: AdapterSpec,
        key_prefix_for: Callable[[str], str],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> AdapterSet:
        """Build a fresh adapter for each target the network adapts (others are listed in `skipped`)."""
        adapter_cls = network_class(spec.network)
        accepted = {path: module for path, module in targets.items() if adapter_cls.accepts(module)}
        skipped = sorted(set(targets) - set(accepted))
        if skipped:
            log.info("network %r leaves %d of %d target layers alone (e.g. %s)", spec.network, len(skipped),
                     len(targets), skipped[0])  # fmt: skip
        if not accepted:
            raise ValueError(
                f"network {spec.network!r} adapts none of the {len(targets)} target layers given"
                + (" (convolutions with kernels > 1x1 need 'locon')" if targets else "; check the target filter")
            )
        prefixes = {path: key_prefix_for(path) for path in accepted}
        clashes = _duplicates(prefixes)
        if clashes:
            raise ValueError(f"key_prefix_for maps several layers to one name: {clashes}")
        adapters = {path: adapter_cls(module, spec) for path, module in accepted.items()}
        adapter_set = cls(spec, accepted, prefixes, adapters)
        adapter_set.skipped = skipped
        return adapter_set.to(device=device, dtype=dtype)

    # ---- attaching ----------------------------------------------------------------------------------
    @property
    def attached_count(self) -> int:
        """How many forward hooks are registered right now."""
        return len(self._handles)

    def attach(self) -> None:
        """Register one forward hook per target layer (no-op when already attached)."""
        if self._handles:
            return
        for path, module in self._targets.items():
            adapter = self.adapters[self.prefixes[path]]
            self._handles.append(module.register_forward_hook(_BranchHook(self, adapter)))

    def detach(self) -> None:
        """Remove every hook; the targets then compute exactly their base output. Safe to call repeatedly."""
        while self._handles:
            self._handles.pop().remove()

    @contextlib.contextmanager
    def attached(self) -> Iterator[AdapterSet]:
        """Context manager: attach, yield, always detach."""
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    # ---- inspection ---------------------------------------------------------------------------------
    @property
    def module_paths(self) -> list[str]:
        """Adapted module paths, in creation order."""
        return list(self._targets)

    def adapter(self, module_path: str) -> Adapter:
        """The adapter attached to `module_path`."""
        if module_path not in self.prefixes:
            raise KeyError(f"no adapter on {module_path!r}")
        return self.adapters[self.prefixes[module_path]]

    def delta_weight(self, module_path: str) -> Tensor:
        """The weight change the hooked layer behaves as (multiplier included), in the target weight's shape."""
        adapter = self.adapter(module_path)
        base = self._targets[module_path].weight if adapter.needs_base_weight else None
        with torch.no_grad():
            return adapter.delta_weight(base) * self.multiplier

    # ---- kohya tensors --------------------------------------------------------------------------------
    def state_dict_kohya(self) -> dict[str, Tensor]:
        """`{prefix}.{suffix}` -> detached tensor copy, in the layout ComfyUI / kohya / LyCORIS loaders read."""
        return {
            f"{prefix}.{suffix}": tensor
            for prefix, adapter in self.adapters.items()
            for suffix, tensor in adapter.kohya_tensors().items()
        }

    def load_state_dict_kohya(self, tensors: dict[str, Tensor]) -> None:
        """Load tensors written by `state_dict_kohya` (resume). Every key must match, shapes included."""
        expected = {
            f"{prefix}.{suffix}": value
            for prefix, adapter in self.adapters.items()
            for suffix, value in adapter.state_dict().items()
        }
        unknown = sorted(set(tensors) - set(expected))
        missing = sorted(set(expected) - set(tensors))
        if unknown or missing:
            raise ValueError(
                f"LoRA tensors do not match this {self.spec.network!r} adapter set: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unknown)} unexpected (e.g. {unknown[:3]}). "
                "Resume with the same network, targets and text-encoder settings the file was trained with."
            )
        for key, current in expected.items():
            if tuple(tensors[key].shape) != tuple(current.shape):
                raise ValueError(
                    f"{key}: file shape {tuple(tensors[key].shape)} != adapter shape {tuple(current.shape)} "
                    "(was it trained with another rank?)"
                )
        with torch.no_grad():
            for key, current in expected.items():
                current.copy_(tensors[key].to(device=current.device, dtype=current.dtype))
        for adapter in self.adapters.values():
            adapter.refresh_scale()


def _duplicates(prefixes: dict[str, str]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for path, prefix in prefixes.items():
        seen.setdefault(prefix, []).append(path)
    return {prefix: paths for prefix, paths in seen.items() if len(paths) > 1}


class _BranchHook:
    """Forward hook: output + multiplier * adapter(input), computed in the adapter's dtype, cast to the output's."""

    def __init__(self, owner: AdapterSet, adapter: Adapter):
        self.owner = owner
        self.adapter = adapter

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        owner = self.owner
        if not owner.enabled or owner.multiplier == 0 or self.adapter.dropped():
            return None
        x = args[0]
        ref = self.adapter.alpha  # a buffer: `.to()` moves and casts it with the adapter's parameters
        # Under autocast the matmuls cast for themselves; otherwise bring the input to the adapter's dtype.
        dtype = x.dtype if torch.is_autocast_enabled(x.device.type) else ref.dtype
        if x.device != ref.device or x.dtype != dtype:
            x = x.to(device=ref.device, dtype=dtype)
        base = module.weight if self.adapter.needs_base_weight else None
        return self.adapter.add_branch(output, x, base, owner.multiplier)
