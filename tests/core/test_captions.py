"""Caption shuffling (kohya's shuffle_caption / keep_tokens) and preview prompts."""

import torch

from lora_train.training.captions import kept_tags, preview_prompts, shuffle_tags, split_tags, training_captions

CAPTION = "mychar, red hair, smiling, outdoors, blue sky, from above"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_split_tags_strips_and_drops_empty_tags():
    assert split_tags(" a ,b,, c ,") == ["a", "b", "c"]
    assert split_tags("") == []


def test_shuffle_is_a_permutation_that_keeps_the_first_tokens_in_place():
    generator = _gen()
    for _ in range(50):
        tags = split_tags(shuffle_tags(CAPTION, generator, keep_tokens=2))
        assert tags[:2] == ["mychar", "red hair"]
        assert sorted(tags) == sorted(split_tags(CAPTION))


def test_shuffle_changes_the_order_from_use_to_use():
    generator = _gen()
    orders = {shuffle_tags(CAPTION, generator) for _ in range(30)}
    assert len(orders) > 10, "30 shuffles of 6 tags gave almost always the same order"


def test_every_tag_reaches_every_free_position():
    generator = _gen(1)
    seen: dict[int, set[str]] = {i: set() for i in range(1, 6)}
    for _ in range(300):
        for position, tag in enumerate(split_tags(shuffle_tags(CAPTION, generator, keep_tokens=1))[1:], start=1):
            seen[position].add(tag)
    assert all(tags == set(split_tags(CAPTION)[1:]) for tags in seen.values())


def test_same_seed_same_orders():
    a, b = _gen(7), _gen(7)
    assert [shuffle_tags(CAPTION, a, 1) for _ in range(5)] == [shuffle_tags(CAPTION, b, 1) for _ in range(5)]


def test_keep_tokens_at_or_beyond_the_tag_count_leaves_the_caption_as_is():
    assert shuffle_tags(CAPTION, _gen(), keep_tokens=6) == ", ".join(split_tags(CAPTION))
    assert shuffle_tags(CAPTION, _gen(), keep_tokens=99) == ", ".join(split_tags(CAPTION))
    assert shuffle_tags("", _gen(), keep_tokens=0) == ""


def test_dropped_captions_are_empty_but_draw_like_the_others():
    dropped, kept = _gen(3), _gen(3)
    texts = training_captions([CAPTION, CAPTION], [True, False], dropped, keep=1, shuffle=True)
    training_captions([CAPTION, CAPTION], [False, False], kept, keep=1, shuffle=True)
    assert texts[0] == "" and split_tags(texts[1])[0] == "mychar"
    assert torch.equal(dropped.get_state(), kept.get_state()), "dropout changed the number of random draws"


def test_without_shuffle_captions_pass_through_and_nothing_is_drawn():
    generator = _gen(3)
    state = generator.get_state()
    assert training_captions([CAPTION, "b"], [False, True], generator, keep=0, shuffle=False) == [CAPTION, ""]
    assert torch.equal(generator.get_state(), state)


def test_the_trigger_word_counts_as_one_kept_tag():
    assert kept_tags(0, "") == 0
    assert kept_tags(0, "mychar") == 1
    assert kept_tags(2, " mychar ") == 3


def test_preview_prompts_default_to_the_trigger_word_then_the_first_caption():
    assert preview_prompts("a cat\n\n  a dog  \n", "trig", "cap") == ["a cat", "a dog"]
    assert preview_prompts("", "trig", "cap") == ["trig"]
    assert preview_prompts("  \n", "", "first caption") == ["first caption"]
