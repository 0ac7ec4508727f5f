"""Load LoRA Dataset -> Auto-label (CLIP) in a real ComfyUI, and the graph CLIP path checked against transformers.

The server test labels with a tiny Hugging Face CLIP folder generated here (a ComfyUI clip_vision file would have
to be a full-size ViT: ComfyUI picks its config by layer count). The CLIP_VISION + CLIP path is checked in this
process on ComfyUI's own classes (ClipVisionModel, sd.CLIP with SD1ClipModel) holding the same tiny weights.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_train.dev.server import WorkflowError

pytestmark = pytest.mark.host
torch = pytest.importorskip("torch")

PHRASES = ["red", "green", "blue", "a cat", "a dog", "a tree", "a house", "night", "day", "water"]


@pytest.fixture(scope="module")
def clip_dir(host, tmp_path_factory) -> Path:
    from lora_train.dev.tiny_clip import write_tiny_hf_clip

    return write_tiny_hf_clip(tmp_path_factory.mktemp("tiny_clip"), host.comfyui / "comfy" / "sd1_tokenizer", seed=3)


def sample_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((32, 32, 3)) ** p * 255).astype(np.uint8)) for p in (0.5, 1, 2, 4)]
    return images + [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255)]]


def workflow(folder: Path, clip_path: str, **label) -> dict:
    return {
        "1": {
            "class_type": "LoraTrain_LoadDataset",
            "inputs": {
                "path": str(folder),
                "captions": "txt_then_csv",
                "default_caption": "",
                "repeats": 1,
                "resolution": 512,
                "max_pixels": 89478485,
                "strict": False,
            },
        },
        "2": {
            "class_type": "LoraTrain_AutoLabel",
            "inputs": {
                "folder": "",
                "dataset": ["1", 0],
                "captioner": "clip",
                "clip_path": clip_path,
                "vocabularies": "colour, subject",
                "template": "{}",
                "top_k": 3,
                "per_vocabulary": 2,
                "threshold": -1.0,
                "trigger": "zkw",
                "mode": "skip",
                "write_csv": True,
                "write_sidecars": False,
                "csv_path": "",
                "batch_size": 4,
                "separator": ", ",
                "embedding_cache": "",
                "device": "cpu",
                **label,
            },
        },
    }


def test_load_dataset_then_auto_label_writes_metadata_csv(comfy, clip_dir, tmp_path):
    from lora_train.dataset.loading import load_dataset

    folder = tmp_path / "dataset"
    (folder / "5_style").mkdir(parents=True)
    for index, img in enumerate(sample_images()):
        img.save(folder / "5_style" / f"img{index}.png")
    (folder / "5_style" / "img0.txt").write_text("my own caption")
    (folder / "broken.png").write_bytes(b"")

    result = comfy.run_workflow(workflow(folder, str(clip_dir)))

    preview = result.outputs["1"]["images"][0]
    grid = Image.open(__import__("io").BytesIO(comfy.view(preview)))
    assert grid.size == (3 * 128, 2 * 128)
    summary = result.outputs["2"]["text"][0]
    assert "labelled 6 image(s)" in summary and "metadata.csv" in summary
    rows = load_dataset(folder, captions="csv").items
    assert len(rows) == 6 and all(item.caption.startswith("zkw, ") for item in rows)
    assert all(len(item.caption.split(", ")) == 4 for item in rows), "trigger + top_k=3 tags"
    assert (folder / "5_style" / "img0.txt").read_text() == "my own caption", "skip mode keeps sidecars"
    assert "5_style/img1.png" in (folder / "metadata.csv").read_text()


def test_auto_label_without_a_model_says_what_to_put_where(comfy, tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    sample_images()[0].save(folder / "a.png")
    with pytest.raises(WorkflowError, match="models/clip_vision/"):
        comfy.run_workflow(workflow(folder, ""))


def test_dataset_report_names_bad_files_through_the_server(comfy, tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    sample_images()[0].save(folder / "good.png")
    (folder / "zero.jpg").write_bytes(b"")
    wf = {"1": workflow(folder, "")["1"]}
    wf["1"]["inputs"]["strict"] = True
    with pytest.raises(WorkflowError, match=r"zero\.jpg: empty file"):
        comfy.run_workflow(wf)


# ---- the graph CLIP path on ComfyUI's own classes ------------------------------------------------------------


@pytest.fixture(scope="module")
def comfy_lib(host):
    from lora_train.host.bootstrap import import_comfy

    import_comfy(host.comfyui, cpu=True)
    import comfy.clip_vision
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    return comfy


def comfy_towers(comfy, clip_dir: Path, tmp_path: Path, vision_projection: int | None = None):
    """ComfyUI's ClipVisionModel and an SD1.5-style CLIP object loaded with the tiny HF CLIP's weights."""
    from safetensors.torch import load_file

    hf = json.loads((clip_dir / "config.json").read_text())
    weights = load_file(str(clip_dir / "model.safetensors"))
    vision_cfg = {**hf["vision_config"], "model_type": "clip_vision_model", "num_channels": 3,
                  "projection_dim": vision_projection or hf["projection_dim"]}  # fmt: skip
    vision_cfg.setdefault("hidden_act", "quick_gelu")
    (tmp_path / "vision.json").write_text(json.dumps(vision_cfg))
    clip_vision = comfy.clip_vision.ClipVisionModel(str(tmp_path / "vision.json"))
    vision_sd = {k: v for k, v in weights.items() if k.startswith(("vision_model.", "visual_projection."))}
    if vision_projection:
        vision_sd["visual_projection.weight"] = torch.randn(vision_projection, hf["vision_config"]["hidden_size"])
    missing, _ = clip_vision.load_sd(vision_sd)
    assert not missing
    text_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    text_cfg = {k: hf["text_config"][k] for k in text_keys}
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": text_cfg})
    text_sd = {k: v for k, v in weights.items() if k.startswith(("text_model.", "text_projection."))}
    missing, _ = clip.load_sd(text_sd)
    assert not [k for k in missing if "position_ids" not in k]
    return clip_vision, clip


def test_graph_clip_matches_transformers_and_encode_from_tokens_is_unprojected(comfy_lib, clip_dir, tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    from lora_train.dataset.autolabel import CaptionConfig, caption_images
    from lora_train.dataset.captioners.comfy_clip import comfy_clip_encoders
    from lora_train.dataset.captioners.hf_clip import load_hf_clip

    clip_vision, clip = comfy_towers(comfy_lib, clip_dir, tmp_path)
    graph = comfy_clip_encoders(clip_vision, clip)
    hf = load_hf_clip(clip_dir, device="cpu")
    images = sample_images()
    cos = torch.nn.functional.cosine_similarity
    assert cos(graph.encode_images(images), hf.encode_images(images)).min() > 0.9999
    assert cos(graph.encode_texts(PHRASES), hf.encode_texts(PHRASES)).min() > 0.9999
    vocab = tmp_path / "v.txt"
    vocab.write_text("\n".join(PHRASES))
    cfg = CaptionConfig(vocabularies=[str(vocab)], threshold=-1.0, top_k=3)
    assert caption_images(images, graph, cfg) == caption_images(images, hf, cfg)

    # ComfyUI's documented call returns the pooled output *before* text_projection for SD1-style CLIP objects.
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    ids = CLIPTokenizer.from_pretrained(str(clip_dir))(["a cat"], return_tensors="pt")
    with torch.no_grad():
        unprojected = model.text_model(**ids).pooler_output
    _, pooled = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
    assert cos(pooled.float(), unprojected).item() > 0.9999
    assert cos(pooled.float(), model.text_projection(unprojected)).item() < 0.99


def test_graph_clip_refuses_mismatched_widths_and_missing_projection(comfy_lib, clip_dir, tmp_path):
    from lora_train.dataset.autolabel import CaptionError
    from lora_train.dataset.captioners.comfy_clip import comfy_clip_encoders

    clip_vision, clip = comfy_towers(comfy_lib, clip_dir, tmp_path, vision_projection=16)
    with pytest.raises(CaptionError, match=r"16-wide image embeddings .* clip_l \(32\).*ViT-H/14 vision \(1024"):
        comfy_clip_encoders(clip_vision, clip)
    clip_vision, clip = comfy_towers(comfy_lib, clip_dir, tmp_path)
    with torch.no_grad():
        clip.cond_stage_model.clip_l.transformer.text_projection.weight.zero_()
    with pytest.raises(CaptionError, match="no text projection weights"):
        comfy_clip_encoders(clip_vision, clip)


def test_sd15_checkpoint_clip_without_projection_is_refused(comfy_lib, clip_dir, tiny_models_dir, tmp_path):
    from lora_train.dataset.autolabel import CaptionError
    from lora_train.dataset.captioners.comfy_clip import comfy_clip_encoders
    from lora_train.dev.tiny_models import TINY_SD15_NAME

    checkpoint = tiny_models_dir / "checkpoints" / TINY_SD15_NAME
    _, clip, *_ = comfy_lib.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clipvision=False)
    clip_vision, _ = comfy_towers(comfy_lib, clip_dir, tmp_path, vision_projection=768)
    with pytest.raises(CaptionError, match=r"SD1\.5 and SDXL checkpoints leave them out"):
        comfy_clip_encoders(clip_vision, clip)
    # The never-loaded projection is uninitialised memory: after a long session it can hold a freed tensor's
    # weight-like values. It is still refused (it was never copied in from the file).
    projection = clip.cond_stage_model.clip_l.transformer.text_projection.weight
    weight_like = torch.randn(projection.shape, generator=torch.Generator().manual_seed(0)) * 0.02
    projection.data = weight_like.to(projection.dtype)
    with pytest.raises(CaptionError, match="no text projection weights"):
        comfy_clip_encoders(clip_vision, clip)


def test_load_dataset_auto_label_then_train_lora_in_one_graph(comfy, clip_dir, tmp_path):
    from lora_train.dev.workflows import CKPT, train_settings
    from lora_train.training.lora_io import load_lora

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for index, img in enumerate(sample_images()):
        img.resize((64, 64)).save(folder / f"img{index}.png")
    graph = workflow(folder, str(clip_dir))
    graph["1"]["inputs"]["resolution"] = 64
    graph["ckpt"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}
    graph["train"] = {
        "class_type": "LoraTrain_TrainLoRA",
        "inputs": {
            "model": ["ckpt", 0],
            "clip": ["ckpt", 1],
            "vae": ["ckpt", 2],
            "dataset": ["2", 0],
            **train_settings(steps=2, output_name="labelled_then_trained"),
        },
    }
    result = comfy.run_workflow(graph)
    assert result.outputs["train"]["lora_name"] == ["labelled_then_trained.safetensors"]
    _, metadata = load_lora(comfy.models_dir / "loras" / "labelled_then_trained.safetensors")
    tags = json.loads(metadata["ss_tag_frequency"])
    assert any("zkw" in folder_tags for folder_tags in tags.values()), tags
