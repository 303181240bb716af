"""BERT's masking: 15 % of the non-special tokens selected, 80/10/10, loss only on the selected,
new masks each epoch, reproducible from the seed, and the same rule (and random draws) as
transformers' DataCollatorForLanguageModeling."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from minillama.bert.masking import MLMBatches, batch_generator, mask_tokens, special_tokens_mask
from minillama.data import TokenLoader
from minillama.data.tokenfile import write_token_file

PAD, UNK, CLS, SEP, MASK = range(5)
SPECIAL = {PAD, UNK, CLS, SEP, MASK}
VOCAB = 500


def sentences(batch=64, seq=128, seed=0):
    """Ids with [CLS] first, [SEP] last, right padding on every other row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, seq), generator=generator)
    ids[:, 0], ids[:, -1] = CLS, SEP
    ids[::2, seq // 2:] = PAD
    ids[::2, seq // 2 - 1] = SEP
    return ids


def test_selection_and_80_10_10_statistics():
    ids = sentences(400, 128)
    special = special_tokens_mask(ids, SPECIAL)
    inputs, labels = mask_tokens(ids, special, MASK, VOCAB, torch.Generator().manual_seed(1))
    selected = labels != -100
    assert not (selected & special).any()  # never a special token or padding
    assert torch.equal(labels[selected], ids[selected])  # labels: the original tokens
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else changes
    share = selected.sum() / (~special).sum()
    assert abs(share - 0.15) < 0.005
    n = int(selected.sum())
    masked = (inputs[selected] == MASK).sum() / n
    unchanged = (inputs[selected] == ids[selected]).sum() / n
    random = 1 - masked - unchanged
    tolerance = 4 * (0.1 * 0.9 / n) ** 0.5  # four standard deviations
    assert abs(masked - 0.8) < 4 * (0.8 * 0.2 / n) ** 0.5
    assert abs(unchanged - (0.1 + 0.1 / VOCAB)) < tolerance  # a random token may be the same one
    assert abs(random - 0.1 * (1 - 1 / VOCAB)) < tolerance


def test_the_same_seed_gives_the_same_masks():
    ids = sentences()
    special = special_tokens_mask(ids, SPECIAL)
    a = mask_tokens(ids, special, MASK, VOCAB, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, special, MASK, VOCAB, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, special, MASK, VOCAB, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_same_rule_and_draws_as_transformers_collator():
    transformers = pytest.importorskip("transformers")
    tokenizer = SimpleNamespace(mask_token="[MASK]", convert_tokens_to_ids=lambda token: MASK,
                                __len__=lambda: VOCAB, pad_token="[PAD]", _pad_token="[PAD]")
    collator = transformers.DataCollatorForLanguageModeling.__new__(transformers.DataCollatorForLanguageModeling)
    collator.__dict__.update(tokenizer=_Sized(tokenizer), mlm=True, mlm_probability=0.15, mask_replace_prob=0.8,
                             random_replace_prob=0.1, whole_word_mask=False, generator=None)
    for seed in range(3):
        ids = sentences(16, 40, seed)
        special = special_tokens_mask(ids, SPECIAL)
        torch.manual_seed(seed)
        theirs = collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special.long())
        ours = mask_tokens(ids, special, MASK, VOCAB, torch.Generator().manual_seed(seed))
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


class _Sized:
    """A stand-in tokenizer with len() (the collator's random tokens come from range(len(tokenizer)))."""

    def __init__(self, inner):
        self.__dict__.update(vars(inner))

    def __len__(self):
        return VOCAB


def _batches(tmp_path, mode="sequential", seed=3, rank=0, world_size=1, probability=0.15):
    ids = np.random.default_rng(0).integers(5, VOCAB, 2000)
    ids[::50] = SEP  # document boundaries
    path = tmp_path / "train.bin"
    if not path.exists():
        write_token_file(path, ids)
    tokenizer = SimpleNamespace(cls_token_id=CLS, sep_token_id=SEP, mask_token_id=MASK, special_ids=lambda: SPECIAL)
    return MLMBatches(TokenLoader(path, 4, 30, mode=mode, seed=seed), tokenizer, VOCAB, seed, rank, world_size,
                      probability)


def test_batches_frame_windows_with_cls_and_sep(tmp_path):
    batch = next(_batches(tmp_path))
    assert batch["input_ids"].shape == (4, 32)
    assert (batch["input_ids"][:, 0] == CLS).all() and (batch["input_ids"][:, -1] == SEP).all()
    assert (batch["labels"][:, [0, -1]] == -100).all() and (batch["labels"] != -100).any()
    assert batch["attention_mask"].all()


def test_dynamic_masking_new_masks_each_epoch(tmp_path):
    batches = _batches(tmp_path)
    per_epoch = batches.loader.batches_per_epoch
    first = next(batches)
    for _ in range(per_epoch - 1):
        next(batches)
    again = next(batches)  # the same windows, one epoch later
    original = lambda b: torch.where(b["labels"] != -100, b["labels"], b["input_ids"])  # noqa: E731
    assert torch.equal(original(first), original(again))
    assert not torch.equal(first["labels"], again["labels"])


def test_masks_resume_exactly_and_follow_the_seed(tmp_path):
    batches = _batches(tmp_path, mode="random")
    for _ in range(3):
        next(batches)
    state = batches.state_dict()
    expected = next(batches)
    resumed = _batches(tmp_path, mode="random")
    resumed.load_state_dict(state)
    got = next(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    fresh, other = _batches(tmp_path, mode="random"), _batches(tmp_path, mode="random", seed=4)
    assert torch.equal(next(fresh)["labels"], next(_batches(tmp_path, mode="random"))["labels"])
    assert not torch.equal(next(fresh)["input_ids"], next(other)["input_ids"])
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_another_masking_rate_trains_on_it_validates_at_15_percent_and_resumes_only_at_it(tmp_path):
    """--mlm-probability 0.4 selects 40 % of the tokens for the loss (80/10/10 among them as ever);
    validation batches are masked at BERT's 15 % whatever the training rate, and a run resumes only
    at its own rate."""
    from minillama.bert.pretrain import validation_batches

    rated = _batches(tmp_path, probability=0.4)
    selected = sum(int((next(rated)["labels"] != -100).sum()) for _ in range(100))
    candidates = 100 * 4 * 30  # non-special positions, but for the [SEP]s inside the windows
    assert 0.37 < selected / candidates < 0.41
    tokens = np.random.default_rng(1).integers(5, VOCAB, 4000)
    chosen = [int((b["labels"] != -100).sum()) for b in validation_batches(rated, tokens, 4, 32)]
    assert abs(sum(chosen) / (len(chosen) * 4 * 30) - 0.15) < 0.02
    plain = [int((b["labels"] != -100).sum()) for b in validation_batches(_batches(tmp_path), tokens, 4, 32)]
    assert chosen == plain
    with pytest.raises(ValueError, match="--mlm-probability 0.4"):
        _batches(tmp_path).load_state_dict(rated.state_dict())


def test_batch_generators_differ_by_batch():
    a, b = batch_generator(1, 0), batch_generator(1, 1)
    assert not torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))


def test_ranks_take_their_rows_of_one_process_batch(tmp_path):
    """Under torchrun every rank masks the whole global batch (4 windows) as one process does and
    takes its rows, weighted by its share of the selected tokens (1 in one process)."""
    one = _batches(tmp_path, mode="random")
    ranks = [_batches(tmp_path, mode="random", rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):
        whole, halves = next(one), [next(r) for r in ranks]
        assert float(whole["loss_weight"]) == 1.0
        for key in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(torch.cat([h[key] for h in halves]), whole[key])
        selected = [int((h["labels"] != -100).sum()) for h in halves]
        assert [float(h["loss_weight"]) for h in halves] == pytest.approx([2 * n / sum(selected) for n in selected])
