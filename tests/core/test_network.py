"""Adapter sets: exact no-ops at step 0, exact base output after detach, hook == merged weight, kohya layout."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_train.training.networks.adapter_set import (
    NETWORKS,
    AdapterSet,
    AdapterSpec,
    find_targets,
    kohya_te_prefix,
    kohya_unet_prefix,
)

ALL = sorted(NETWORKS)


class TinyNet(nn.Module):
    """Linear, 1x1 conv, dilated 3x3 conv and strided 3x3 conv: every geometry a hook must mirror."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(4, 8, 3, padding=2, dilation=2)
        self.proj_in = nn.Conv2d(8, 8, 1)
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.to_out = nn.Linear(12, 6)

    def forward(self, x):
        h = F.silu(self.proj_in(self.conv_in(x)))
        h = self.down(h).flatten(2).transpose(1, 2)
        return self.to_out(h)


def make_net(seed=0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().requires_grad_(False)


def inputs(seed=1) -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def make_set(net, network="lora", rank=4, alpha=2.0, dropout=0.0) -> AdapterSet:
    targets = find_targets(net, lambda name, module: True)
    return AdapterSet.create(targets, AdapterSpec(rank, alpha, dropout, network), key_prefix_for=kohya_unet_prefix)


def randomize(adapters: AdapterSet, seed=2) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in adapters.named_parameters():
            offset = 1.0 if name.endswith("dora_scale") else 0.0  # magnitudes stay positive
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + offset)


@pytest.mark.parametrize("network", ALL)
def test_fresh_adapters_change_nothing(network):
    net, x = make_net(), inputs()
    base = net(x)
    adapters = make_set(net, network)
    with adapters.attached():
        hooked = net(x)
    if network == "dora":  # ||W|| / (||W|| + eps) is 1 within float rounding
        torch.testing.assert_close(hooked, base, rtol=0, atol=1e-6)
    else:
        assert torch.equal(hooked, base)


@pytest.mark.parametrize("network", ALL)
def test_detach_restores_exact_base_output_and_state_dict(network):
    net, x = make_net(), inputs()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modules_before = [name for name, _ in net.named_modules()]
    base = net(x)
    adapters = make_set(net, network)
    randomize(adapters)
    adapters.attach()
    adapters.attach()  # attaching twice must not add the branch twice
    assert adapters.attached_count == len(adapters.module_paths)
    changed = net(x)
    assert not torch.allclose(changed, base, atol=1e-3)
    assert list(net.state_dict()) == list(before)  # keys untouched while attached
    adapters.detach()
    adapters.detach()
    assert torch.equal(net(x), base)
    assert [name for name, _ in net.named_modules()] == modules_before
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("network", ALL)
def test_hooked_output_equals_output_with_merged_weights(network):
    net, x = make_net(), inputs()
    adapters = make_set(net, network, rank=3, alpha=1.5)
    randomize(adapters)
    adapters.multiplier = 0.7
    adapters.eval()
    merged = copy.deepcopy(net)
    for path in adapters.module_paths:
        with torch.no_grad():
            merged.get_submodule(path).weight += adapters.delta_weight(path)
    with adapters.attached():
        hooked = net(x)
    expected = merged(x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("network", ALL)
def test_gradient_reaches_only_adapter_parameters(network):
    net, x = make_net(), inputs()
    adapters = make_set(net, network)
    randomize(adapters)
    base_ids = {id(p) for p in net.parameters()}
    assert not base_ids & {id(p) for p in adapters.parameters()}
    assert {name.split(".")[0] for name, _ in adapters.named_parameters()} == {"adapters"}
    with adapters.attached():
        net(x).square().mean().backward()
    assert all(p.grad is None for p in net.parameters())
    grads = {name: p.grad for name, p in adapters.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]


@pytest.mark.parametrize("network", ALL)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_hooks_train_on_layers_whose_weights_are_inference_tensors(network, kind):
    """ComfyUI loads weights under inference_mode; training runs outside it. Grads must equal a normal layer's."""

    def layer():
        torch.manual_seed(3)
        return nn.Linear(12, 6) if kind == "linear" else nn.Conv2d(8, 12, 3, stride=2, padding=1)

    x = torch.randn(2, 5, 12) if kind == "linear" else torch.randn(2, 8, 6, 6)
    with torch.inference_mode():
        frozen = layer().requires_grad_(False)  # a frozen base, as the trainer holds it
    assert frozen.weight.is_inference()
    grads = []
    network = "locon" if network == "lora" and kind == "conv" else network
    for module in (frozen, layer().requires_grad_(False)):
        adapters = AdapterSet.create({"layer": module}, AdapterSpec(2, 2.0, network=network), kohya_unet_prefix)
        randomize(adapters)
        with adapters.attached():
            module(x).square().mean().backward()
        grads.append([p.grad for p in adapters.parameters()])
    for inference_grad, normal_grad in zip(*grads, strict=True):
        torch.testing.assert_close(inference_grad, normal_grad)


def test_lora_leaves_spatial_convs_alone_and_locon_adapts_them():
    net = make_net()
    lora, locon = make_set(net, "lora"), make_set(net, "locon")
    assert lora.module_paths == ["proj_in", "to_out"]
    assert lora.skipped == ["conv_in", "down"]
    assert locon.module_paths == ["conv_in", "proj_in", "down", "to_out"]
    down = locon.adapter("down")
    assert down.lora_down.kernel_size == (3, 3) and down.lora_down.stride == (2, 2)
    assert down.lora_up.kernel_size == (1, 1)


def test_create_refuses_bad_spec_and_unknown_network():
    with pytest.raises(ValueError, match="rank"):
        AdapterSpec(0, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        AdapterSpec(4, float("nan"))
    with pytest.raises(ValueError, match="dropout"):
        AdapterSpec(4, 4.0, dropout=1.0)
    with pytest.raises(ValueError, match="choose one of: lora, locon, dora, loha, lokr"):
        make_set(make_net(), "lorra")
    with pytest.raises(ValueError, match="locon"):
        AdapterSet.create({"c": nn.Conv2d(2, 2, 3)}, AdapterSpec(2, 2.0), kohya_unet_prefix)
    with pytest.raises(ValueError, match="several layers"):
        make_set(make_net()).create(find_targets(make_net(), lambda n, m: True), AdapterSpec(2, 2.0, network="locon"),
                                    key_prefix_for=lambda path: "same")  # fmt: skip


def test_find_targets_sees_subclasses_and_honours_include():
    class CastLinear(nn.Linear):  # ComfyUI's ops classes subclass torch's layers like this
        pass

    root = nn.Sequential(CastLinear(4, 4), nn.Conv2d(4, 4, 3, groups=2), nn.LayerNorm(4), nn.Linear(4, 2))
    assert list(find_targets(root, lambda name, module: True)) == ["0", "3"]
    assert list(find_targets(root, lambda name, module: name != "3")) == ["0"]


def test_multiplier_scales_the_branch_and_enabled_gates_it():
    torch.manual_seed(0)
    layer, x = nn.Linear(12, 6).requires_grad_(False), torch.randn(3, 12)
    base = layer(x)
    adapters = AdapterSet.create({"layer": layer}, AdapterSpec(4, 4.0), kohya_unet_prefix)
    randomize(adapters)
    with adapters.attached():
        full = layer(x)
        adapters.multiplier = 0.5
        half = layer(x)
        adapters.enabled = False
        gated = layer(x)
    torch.testing.assert_close(half - base, (full - base) * 0.5)
    assert torch.equal(gated, base)


def test_dropout_applies_in_training_mode_only():
    net, x = make_net(), inputs()
    adapters = make_set(net, "locon", dropout=0.5)
    randomize(adapters)
    with adapters.attached():
        adapters.train()
        torch.manual_seed(0)
        first = net(x)
        second = net(x)
        adapters.eval()
        assert torch.equal(net(x), net(x))
    assert not torch.equal(first, second)


def test_low_precision_base_and_autocast():
    net, x = make_net(), inputs()
    half_net = copy.deepcopy(net).to(torch.bfloat16)  # copy before attaching: deepcopy would copy the hooks too
    adapters = make_set(net, "locon")
    randomize(adapters)
    adapters_bf16 = make_set(half_net, "locon")
    adapters_bf16.load_state_dict_kohya(adapters.state_dict_kohya())
    with adapters.attached(), adapters_bf16.attached():
        reference = net(x)
        low = half_net(x.to(torch.bfloat16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = net(x)
    assert low.dtype == torch.bfloat16 and auto.dtype == torch.bfloat16
    assert next(adapters_bf16.parameters()).dtype == torch.float32
    scale = reference.abs().max()
    assert (low.float() - reference).abs().max() < 0.05 * scale
    assert (auto.float() - reference).abs().max() < 0.05 * scale
    assert (auto.float() - net(x)).abs().max() > 0.05 * scale  # the branch is really there under autocast


@pytest.mark.parametrize("network", ALL)
def test_kohya_state_dict_round_trip_restores_outputs(network):
    net, x = make_net(), inputs()
    trained = make_set(net, network)
    randomize(trained)
    with trained.attached():
        expected = net(x)
    resumed = make_set(net, network)
    resumed.load_state_dict_kohya(trained.state_dict_kohya())
    with resumed.attached():
        assert torch.equal(net(x), expected)


def test_resume_with_other_rank_or_network_names_the_problem():
    sd = make_set(make_net(), "lora", rank=4).state_dict_kohya()
    with pytest.raises(ValueError, match="another rank"):
        make_set(make_net(), "lora", rank=8).load_state_dict_kohya(sd)
    with pytest.raises(ValueError, match="unexpected"):
        make_set(make_net(), "loha", rank=4).load_state_dict_kohya(sd)


def test_alpha_loaded_from_file_sets_the_scale():
    net, x = make_net(), inputs()
    trained = make_set(net, "lora", rank=4, alpha=1.0)
    randomize(trained)
    with trained.attached():
        expected = net(x)
    resumed = make_set(net, "lora", rank=4, alpha=4.0)
    resumed.load_state_dict_kohya(trained.state_dict_kohya())
    assert resumed.adapter("to_out").scale == 0.25
    with resumed.attached():
        assert torch.equal(net(x), expected)


def test_kohya_names_and_shapes_match_what_comfyui_reads():
    net = make_net()
    shapes = {k: tuple(v.shape) for k, v in make_set(net, "locon", rank=4, alpha=2.0).state_dict_kohya().items()}
    assert shapes["lora_unet_down.lora_down.weight"] == (4, 8, 3, 3)
    assert shapes["lora_unet_down.lora_up.weight"] == (12, 4, 1, 1)
    assert shapes["lora_unet_to_out.lora_down.weight"] == (4, 12)
    assert shapes["lora_unet_to_out.lora_up.weight"] == (6, 4)
    assert shapes["lora_unet_to_out.alpha"] == ()
    assert len(shapes) == 4 * 3
    dora = make_set(net, "dora").state_dict_kohya()
    assert dora["lora_unet_down.dora_scale"].shape == (1, 8, 1, 1)
    assert dora["lora_unet_to_out.dora_scale"].shape == (1, 12)
    suffixes = {net_name: {k.split(".", 1)[1] for k in make_set(net, net_name).state_dict_kohya()}
                for net_name in ("loha", "lokr")}  # fmt: skip
    assert suffixes["loha"] == {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}
    assert suffixes["lokr"] == {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"}
    assert make_set(net, "lora", alpha=2.0).state_dict_kohya()["lora_unet_to_out.alpha"].item() == 2.0


def test_loha_and_lokr_deltas_equal_peft_reference_math():
    from peft.tuners.loha.layer import make_weight
    from peft.tuners.lokr.layer import factorization, make_kron

    net = make_net()
    for path in ("down", "to_out"):
        loha = make_set(net, "loha", rank=3, alpha=1.5)
        randomize(loha)
        a = loha.adapter(path)
        expected = make_weight(a.hada_w1_a, a.hada_w1_b, a.hada_w2_a, a.hada_w2_b, torch.tensor(0.5))
        torch.testing.assert_close(loha.delta_weight(path), expected.reshape(a.weight_shape))

        lokr = make_set(net, "lokr", rank=3, alpha=1.5)
        randomize(lokr)
        k = lokr.adapter(path)
        weight = net.get_submodule(path).weight
        assert k.lokr_w1.shape == (factorization(weight.shape[0])[0], factorization(weight.shape[1])[0])
        expected = make_kron(k.lokr_w1, k.lokr_w2_a @ k.lokr_w2_b, 0.5).reshape(weight.shape)
        torch.testing.assert_close(lokr.delta_weight(path), expected)


def test_dora_delta_follows_comfyui_weight_decompose():
    """ComfyUI: W' = (W + s*dW) * dora_scale / ||W + s*dW|| (norm per input channel); strength blends W and W'."""
    net = make_net()
    adapters = make_set(net, "dora", rank=2, alpha=2.0)
    randomize(adapters)
    adapters.multiplier = 0.6
    for path in adapters.module_paths:
        a, weight = adapters.adapter(path), net.get_submodule(path).weight
        calc = weight + (a.lora_up.weight.flatten(1) @ a.lora_down.weight.flatten(1)).reshape(weight.shape)
        norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, -1, *[1] * (weight.dim() - 2)) + torch.finfo(torch.float32).eps
        expected = 0.6 * (calc * (a.dora_scale / norm) - weight)
        torch.testing.assert_close(adapters.delta_weight(path), expected.detach())


def test_fresh_dora_scale_is_the_base_weight_column_norm():
    net = make_net()
    dora = make_set(net, "dora")
    weight = net.to_out.weight
    torch.testing.assert_close(dora.adapter("to_out").dora_scale.detach(), weight.norm(dim=0, keepdim=True))


def test_kohya_prefixes():
    assert kohya_unet_prefix("diffusion_model.input_blocks.1.1.proj_in") == "lora_unet_input_blocks_1_1_proj_in"
    assert kohya_unet_prefix("output_blocks.2.0.in_layers.2") == "lora_unet_output_blocks_2_0_in_layers_2"
    q = "transformer.text_model.encoder.layers.0.self_attn.q_proj"
    assert kohya_te_prefix(q) == "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert kohya_te_prefix(q, te_index=1) == "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    assert kohya_te_prefix("clip_g." + q, te_index=2) == "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"


def test_adapter_set_moves_with_to_and_keeps_scale():
    adapters = make_set(make_net(), "lora", rank=4, alpha=1.0)
    adapters.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in adapters.parameters())
    assert math.isclose(adapters.adapter("to_out").scale, 0.25)
