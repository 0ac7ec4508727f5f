"""CLIP auto-labelling on a tiny seeded CLIP: ranking, thresholds, trigger, write modes, caches and bad input."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_train.dataset.autolabel import (
    CaptionConfig,
    CaptionError,
    ClipEncoders,
    auto_label,
    caption_images,
    clear_text_cache,
    load_vocabulary,
    merge_caption,
    similarities,
    text_embeddings,
)
from lora_train.dataset.captioners.hf_clip import load_hf_clip
from lora_train.dataset.loading import dataset_from_images, load_dataset
from lora_train.dev import host_builder
from lora_train.dev.tiny_clip import write_tiny_hf_clip
from tests.conftest import REPO_ROOT

torch = pytest.importorskip("torch")

PHRASES = ["red", "green", "blue", "a cat", "a dog", "a tree", "a house", "night", "day", "water"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    tokenizer = host_builder.setup_host().comfyui / "comfy" / "sd1_tokenizer"
    return write_tiny_hf_clip(tmp_path_factory.mktemp("tiny_clip"), tokenizer, seed=3)


@pytest.fixture(scope="module")
def encoders(clip_dir) -> ClipEncoders:
    return load_hf_clip(clip_dir, device="cpu")


@pytest.fixture
def vocab_file(tmp_path) -> Path:
    path = tmp_path / "vocab" / "things.txt"
    path.parent.mkdir()
    path.write_text("# my words\n" + "\n".join(PHRASES) + "\nred\n")
    return path


def sample_images(count: int = 6) -> list[Image.Image]:
    """Noise at different contrasts, then solid colours: seed 3 of the tiny CLIP ranks these differently."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((32, 40, 3)) ** p * 255).astype(np.uint8)) for p in (0.5, 1, 2, 4)]
    images += [Image.new("RGB", (36, 32), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]]
    return images[:count]


def make_folder(root: Path, count: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for index, img in enumerate(sample_images(count)):
        img.save(root / f"img{index}.png")
    return root


class CountingEncoders(ClipEncoders):
    def __init__(self, inner: ClipEncoders):
        self.image_calls: list[int] = []
        self.text_calls: list[int] = []
        super().__init__(self._images, self._texts, inner.model_id)
        self.inner = inner

    def _images(self, images):
        self.image_calls.append(len(images))
        return self.inner.encode_images(images)

    def _texts(self, texts):
        self.text_calls.append(len(texts))
        return self.inner.encode_texts(texts)


def reference_logits(clip_dir: Path, images, texts) -> torch.Tensor:
    """Similarity computed independently: CLIPModel's own forward on CLIPProcessor inputs."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    processor = CLIPProcessor.from_pretrained(str(clip_dir))
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**inputs).logits_per_image


def test_ranking_matches_clipmodel_forward(clip_dir, encoders, vocab_file):
    images = sample_images()
    logits = reference_logits(clip_dir, images, PHRASES)
    top1 = CaptionConfig(vocabularies=[str(vocab_file)], top_k=1, per_vocabulary=1, threshold=-1.0)
    assert caption_images(images, encoders, top1) == [PHRASES[i] for i in logits.argmax(dim=1).tolist()]
    assert len(set(logits.argmax(dim=1).tolist())) > 1, "fixture images should not all rank alike"
    top4 = top1.replace(top_k=4, per_vocabulary=10)
    expected = [", ".join(PHRASES[i] for i in row) for row in logits.topk(4, dim=1).indices.tolist()]
    assert caption_images(images, encoders, top4) == expected


def test_threshold_keeps_only_phrases_scoring_at_least_it(encoders, vocab_file):
    image = sample_images(1)
    vocab = load_vocabulary([str(vocab_file)])
    scores = similarities(encoders.encode_images(image), text_embeddings(encoders, vocab))[0]
    ordered = scores.sort(descending=True).values.tolist()
    cfg = CaptionConfig(vocabularies=[str(vocab_file)], top_k=10, per_vocabulary=10, threshold=ordered[2])
    assert len(caption_images(image, encoders, cfg)[0].split(", ")) == 3
    above_all = CaptionConfig(vocabularies=[str(vocab_file)], threshold=min(1.0, ordered[0] + 1e-4))
    assert caption_images(image, encoders, above_all.replace(trigger="zkw")) == ["zkw"]


def test_per_vocabulary_limit_and_trigger_word(encoders, tmp_path):
    (tmp_path / "colours.txt").write_text("red\ngreen\nblue\n")
    (tmp_path / "things.txt").write_text("a cat\na dog\na tree\n")
    cfg = CaptionConfig(vocabularies=[str(tmp_path / "colours.txt"), str(tmp_path / "things.txt")],
                        top_k=6, per_vocabulary=1, threshold=-1.0, trigger="mystyle")  # fmt: skip
    for caption in caption_images(sample_images(), encoders, cfg):
        parts = caption.split(", ")
        assert parts[0] == "mystyle" and len(parts) == 3
        assert len({"red", "green", "blue"} & set(parts)) == 1 and len({"a cat", "a dog", "a tree"} & set(parts)) == 1


def test_builtin_vocabularies_load_and_unknown_names_are_refused():
    vocab = load_vocabulary(["medium", "colour"])
    assert "oil painting" in vocab.phrases and "red" in vocab.phrases
    assert set(vocab.sources) == {"medium", "colour"}
    with pytest.raises(CaptionError, match=r"neither a built-in one \(colour, composition"):
        load_vocabulary(["colours"])


def test_merge_modes():
    assert merge_caption("old words", ["a", "b"], "skip", "tw") == "old words"
    assert merge_caption("", ["a", "b"], "skip", "tw") == "tw, a, b"
    assert merge_caption("old words", ["a", "b"], "overwrite", "tw") == "tw, a, b"
    assert merge_caption("old, a", ["a", "b"], "append", "tw") == "tw, old, a, b"
    assert merge_caption("tw, old", ["b"], "append", "tw") == "tw, old, b"


def test_skip_mode_never_touches_existing_captions_and_fills_the_rest(encoders, tmp_path, vocab_file):
    root = make_folder(tmp_path / "data")
    (root / "img0.txt").write_text("hand written caption\n")
    (root / "metadata.csv").write_text("file_name,text,rating\nimg1.png,csv caption,5\n")
    sidecar_before = (root / "img0.txt").read_bytes()
    cfg = CaptionConfig(vocabularies=[str(vocab_file)], threshold=-1.0, trigger="zkw", write_sidecars=True)

    result = auto_label(root, cfg, encoders)

    assert (root / "img0.txt").read_bytes() == sidecar_before
    csv_rows = load_dataset(root, captions="csv")
    by_name = {item.path.name: item.caption for item in csv_rows.items}
    assert by_name["img1.png"] == "csv caption"
    assert by_name["img0.png"].startswith("zkw, ") and by_name["img2.png"].startswith("zkw, ")
    assert "rating" in (root / "metadata.csv").read_text().splitlines()[0], "unknown columns survive a rewrite"
    assert "img1.png,csv caption,5" in (root / "metadata.csv").read_text()
    assert (root / "img1.txt").read_text().startswith("zkw, ")
    assert result.labelled == 3  # img0 lacked a CSV row, img1 a sidecar
    assert [p for p in os.listdir(root) if p.startswith(".")] == [], "no temp files left behind"
    captions = {item.path.name: item.caption for item in result.dataset.items}
    assert captions["img0.png"] == "hand written caption" and captions["img1.png"] == "csv caption"

    again = auto_label(root, cfg, encoders)
    assert again.labelled == 0 and again.kept == 3 and again.written == []


def test_overwrite_and_append_modes_on_files(encoders, tmp_path, vocab_file):
    root = make_folder(tmp_path / "data", count=2)
    (root / "img0.txt").write_text("mine")
    base = CaptionConfig(vocabularies=[str(vocab_file)], threshold=-1.0, top_k=2, write_sidecars=True,
                         write_csv=False, trigger="zkw")  # fmt: skip
    appended = auto_label(root, base.replace(mode="append"), encoders)
    assert not (root / "metadata.csv").exists()
    text = (root / "img0.txt").read_text().strip()
    assert text.startswith("zkw, mine, ") and len(text.split(", ")) == 4
    assert {item.path.name: item.caption for item in appended.dataset.items}["img0.png"] == text
    auto_label(root, base.replace(mode="overwrite"), encoders)
    overwritten = (root / "img0.txt").read_text().strip()
    assert "mine" not in overwritten and overwritten.startswith("zkw, ")


def test_csv_round_trips_through_the_dataset_loader(encoders, tmp_path, vocab_file):
    root = make_folder(tmp_path / "data")
    (root / "sub").mkdir()
    sample_images(1)[0].save(root / "sub" / "deep.jpg")
    cfg = CaptionConfig(vocabularies=[str(vocab_file)], threshold=-1.0, trigger='say "hi", friend')
    result = auto_label(root, cfg, encoders)
    loaded = {item.path: item.caption for item in load_dataset(root).items}
    assert loaded == {item.path: item.caption for item in result.dataset.items}
    assert all(caption.startswith('say "hi", friend, ') for caption in loaded.values())
    assert result.dataset.report.missing_captions == [] and result.dataset.report.captions == 4


def test_text_embeddings_are_computed_once_and_cached_on_disk(encoders, tmp_path, vocab_file):
    clear_text_cache()
    counting = CountingEncoders(encoders)
    cfg = CaptionConfig(vocabularies=[str(vocab_file)], threshold=-1.0, batch_size=4,
                        embedding_cache=str(tmp_path / "cache"))  # fmt: skip
    first = caption_images(sample_images(), counting, cfg)
    caption_images(sample_images(), counting, cfg)
    assert counting.text_calls == [len(PHRASES)]
    assert counting.image_calls == [4, 2, 4, 2], "images are encoded in batches of batch_size"
    clear_text_cache()
    assert caption_images(sample_images(), counting, cfg) == first
    assert counting.text_calls == [len(PHRASES)], "second process-equivalent run read the disk cache"
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    vocab_file.write_text("only\nthese\n")
    caption_images(sample_images(1), counting, cfg)
    assert counting.text_calls == [len(PHRASES), 2], "a changed vocabulary is a new cache key"


def test_in_memory_dataset_gets_captions_without_files(encoders, vocab_file):
    dataset = dataset_from_images(sample_images(3), ["", "kept", ""])
    cfg = CaptionConfig(vocabularies=[str(vocab_file)], threshold=-1.0, trigger="zkw")
    result = auto_label(dataset, cfg, encoders)
    captions = [item.caption for item in result.dataset.items]
    assert captions[1] == "kept" and captions[0].startswith("zkw, ") and captions[2].startswith("zkw, ")
    assert result.labelled == 2 and result.written == []
    assert [item.caption for item in dataset.items] == ["", "kept", ""], "the input dataset is not mutated"


def test_unreadable_image_is_reported_and_the_rest_labelled(encoders, tmp_path, vocab_file):
    root = make_folder(tmp_path / "data")
    dataset = load_dataset(root)
    (root / "img1.png").write_bytes(b"broken now")
    result = auto_label(dataset, CaptionConfig(vocabularies=[str(vocab_file)], threshold=-1.0), encoders)
    assert result.labelled == 2 and any("img1.png" in name for name in result.unreadable)
    assert "img1.png" in result.summary()


def test_bad_csv_is_never_rewritten(encoders, tmp_path, vocab_file):
    root = make_folder(tmp_path / "data", count=1)
    original = "file_name,text\nimg0.png,caf\xe9\n".encode("latin-1")
    (root / "metadata.csv").write_bytes(original)
    cfg = CaptionConfig(vocabularies=[str(vocab_file)], mode="append")
    with pytest.raises(CaptionError, match="not valid UTF-8"):
        auto_label(root, cfg, encoders)
    (root / "metadata.csv").write_text("image,desc\nimg0.png,x\n")
    with pytest.raises(CaptionError, match="not file_name,text; not rewriting it"):
        auto_label(root, cfg, encoders)
    assert (root / "metadata.csv").read_text() == "image,desc\nimg0.png,x\n"


def test_missing_model_and_mismatched_widths_say_what_to_do(tmp_path, encoders):
    with pytest.raises(CaptionError, match=r"models/clip_vision/.*Load CLIP Vision"):
        load_hf_clip("")
    with pytest.raises(CaptionError, match=r"config\.json missing"):
        load_hf_clip(tmp_path)
    with pytest.raises(CaptionError, match="not halves of one CLIP model"):
        similarities(torch.ones(1, 768), torch.ones(3, 1024))


def test_cli_labels_a_folder(clip_dir, tmp_path, vocab_file):
    root = make_folder(tmp_path / "data", count=2)
    out = root / "metadata.csv"
    cmd = [sys.executable, "-m", "lora_train", "caption", "--input", str(root), "--output", str(out),
           "--trigger", "zkw", "--mode", "overwrite", "--sidecars", "--clip", str(clip_dir),
           "--vocabularies", str(vocab_file), "--threshold", "-1"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "labelled 2 image(s)" in done.stdout
    assert all(item.caption.startswith("zkw, ") for item in load_dataset(root, captions="csv").items)
    assert (root / "img1.txt").read_text().startswith("zkw, ")
    no_model = [sys.executable, "-m", "lora_train", "caption", "--input", str(root), "--mode", "overwrite"]
    missing = subprocess.run(no_model, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "clip_path is empty" in missing.stderr
