"""Translation data: the shipped Tatoeba pairs, the split by English sentence, references, the joint
tokenizer, padded batches and their exact resume."""

from functools import partial

import pytest
import torch

from minillama.errors import MiniLlamaError
from minillama.seq2seq import data


@pytest.fixture(scope="module")
def pairs():
    return data.tatoeba_pairs()


def test_the_shipped_pairs_keep_their_attribution(pairs):
    assert len(pairs) == 29155  # 29,156 lines, the last one empty
    attribution = "CC-BY 2.0 (France) Attribution: tatoeba.org #538123 (CM) & #891077 (Martha)"
    assert pairs[0] == data.Pair("Hi.", "嗨。", attribution)
    assert all(p.attribution.startswith("CC-BY 2.0 (France) Attribution: tatoeba.org #") for p in pairs)


def test_the_split_is_by_english_sentence_deterministic_and_complete(pairs):
    splits = data.split_pairs(pairs)
    english = {name: {p.en for p in split} for name, split in splits.items()}
    assert len(english["test"]) == 1000 and len(english["validation"]) == 500
    assert not english["test"] & english["train"] and not english["validation"] & english["train"]
    assert not english["test"] & english["validation"]
    assert sum(len(s) for s in splits.values()) == len(pairs)
    again = data.split_pairs(list(reversed(pairs)))  # the file's order does not matter
    assert {p.en for p in again["test"]} == english["test"]
    # multi-reference: test sentences with several translations keep them all
    references = data.with_references(data.oriented(splits["test"], "en-zh"))
    assert len(references) == 1000 and sum(len(r) for _, r in references) == len(splits["test"])
    assert any(len(r) > 1 for _, r in references)


def test_zh_en_swaps_the_sides(pairs):
    assert data.oriented(pairs[:1], "zh-en") == [("嗨。", "Hi.")]
    with pytest.raises(MiniLlamaError, match="direction must be one of en-zh, zh-en"):
        data.oriented(pairs[:1], "fr-en")


def test_bad_tsv_lines_are_named(tmp_path):
    (tmp_path / "no_tab.tsv").write_text("Hi.\t你好。\nHello there\n")
    with pytest.raises(MiniLlamaError, match=r"no_tab.tsv:2: expected 'source<TAB>target', found no tab"):
        data.read_pairs(tmp_path / "no_tab.tsv")
    (tmp_path / "empty.tsv").write_text("Hi.\t你好。\nBye.\t \n")
    with pytest.raises(MiniLlamaError, match=r"empty.tsv:2: the second sentence is empty"):
        data.read_pairs(tmp_path / "empty.tsv")
    (tmp_path / "blank.tsv").write_text("\n\n")
    with pytest.raises(MiniLlamaError, match="holds no sentence pairs"):
        data.read_pairs(tmp_path / "blank.tsv")


def test_joint_tokenizer_has_its_special_ids_and_reads_both_languages(pairs, tmp_path):
    tokenizer = data.train_joint_tokenizer(pairs[::20], 600, tmp_path / "tok")
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1)
    for sentence in ("Tom is reading a book.", "汤姆在看书。"):
        assert tokenizer.decode(tokenizer.encode(sentence)) == sentence
    assert data.bytes_per_token(tokenizer, ["汤姆在看书。"]) > 1.0


def test_collate_pads_sources_and_ignores_target_padding():
    examples = [data.TranslationExample([5, 6, 7], [8, 0]), data.TranslationExample([9], [10, 11, 0])]
    batch = data.collate(examples, pad_token_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 0, -100], [10, 11, 0]]


def test_length_bucketed_batches_resume_exactly_and_waste_little():
    g = torch.Generator().manual_seed(0)
    examples = [data.TranslationExample([3] * int(n), [4] * int(n)) for n in torch.randint(1, 40, (500,), generator=g)]
    collate = partial(data.collate, pad_token_id=1)
    straight = data.LengthBucketedBatches(examples, 8, collate, seed=3)
    seen = [next(straight)["input_ids"] for _ in range(70)]  # crosses an epoch (62 batches each)
    resumed = data.LengthBucketedBatches(examples, 8, collate, seed=3)
    first = data.LengthBucketedBatches(examples, 8, collate, seed=3)
    for _ in range(30):
        next(first)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(next(resumed)["input_ids"], seen[i]) for i in range(30, 70))
    padding = sum(int((b == 1).sum()) for b in seen) / sum(b.numel() for b in seen)
    assert padding < 0.1


def test_sentences_longer_than_the_positions_are_refused_or_cut(pairs, tmp_path):
    tokenizer = data.train_joint_tokenizer(pairs[::40], 400, tmp_path / "tok")
    long = "word " * 50
    with pytest.raises(MiniLlamaError, match="more than the model's 16 positions"):
        data.encode_sources(tokenizer, ["Hi.", long], 16)
    assert len(data.encode_sources(tokenizer, ["Hi.", long], 16, truncate=True)[1]) == 16
    with pytest.raises(MiniLlamaError, match="sentence 1 is empty"):
        data.encode_sources(tokenizer, [""], 16)


def test_ranks_take_the_global_batch_with_their_share_of_its_target_tokens():
    g = torch.Generator().manual_seed(1)
    examples = [data.TranslationExample([3] * int(n), [4] * int(m)) for n, m in torch.randint(1, 20, (64, 2),
                                                                                             generator=g)]
    collate = partial(data.collate, pad_token_id=1)
    one = data.LengthBucketedBatches(examples, 8, collate, seed=2)
    ranks = [data.LengthBucketedBatches(examples, 4, collate, seed=2, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(10):  # crosses an epoch (8 batches each)
        whole, halves = next(one), [next(r) for r in ranks]
        assert float(whole["loss_weight"]) == 1.0
        tokens = [int((b["labels"] != -100).sum()) for b in halves]
        assert sum(tokens) == int((whole["labels"] != -100).sum())
        assert [float(b["loss_weight"]) for b in halves] == pytest.approx([2 * n / sum(tokens) for n in tokens])
