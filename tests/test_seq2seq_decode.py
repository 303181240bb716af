"""Decoding: the cache gives the full forward's logits, and greedy / beam search give the token ids
of `MarianMTModel.generate` on the exported model."""

import pytest
import torch

from minillama.seq2seq.config import Seq2SeqConfig
from minillama.seq2seq.decode import beam_search_ids, generate_ids, teacher_forced_logits
from minillama.seq2seq.model import MiniSeq2Seq

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=53, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=24,
            pad_token_id=1, eos_token_id=2, decoder_start_token_id=0, dropout=0.0)


def random_model(seed: int = 0, **overrides) -> MiniSeq2Seq:
    torch.manual_seed(seed)
    model = MiniSeq2Seq(Seq2SeqConfig(**{**BASE, **overrides})).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
        model.final_logits_bias.normal_(0, 0.3)
    return model


def toy_model(seed: int = 0, steps: int = 60, **overrides) -> MiniSeq2Seq:
    """A model trained briefly to reverse its source: a random one only repeats a token, this one
    writes varied tokens and ends its sentences at varied lengths, and its beams compete."""
    torch.manual_seed(seed)
    model = MiniSeq2Seq(Seq2SeqConfig(**{**BASE, **overrides}))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        lengths = torch.randint(2, 9, (32,), generator=g)
        mask = (torch.arange(8)[None] < lengths[:, None]).long()
        source = torch.randint(3, BASE["vocab_size"], (32, 8), generator=g).masked_fill(mask == 0, 1)
        labels = torch.full((32, 9), -100)
        for row, n in enumerate(lengths.tolist()):
            labels[row, :n] = source[row, :n].flip(0)
            labels[row, n] = BASE["eos_token_id"]
        loss = model(source, mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def sources(seed: int = 0, batch: int = 4, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, BASE["vocab_size"], (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, length - 2 * row:] = 0
    return ids.masked_fill(mask == 0, BASE["pad_token_id"]), mask


@pytest.mark.parametrize("pre_norm", [False, True], ids=["post-norm", "pre-norm"])
def test_cached_decoding_equals_the_full_forward(pre_norm):
    model = random_model(normalize_before=pre_norm)
    ids, mask = sources()
    target = torch.randint(3, BASE["vocab_size"], (ids.shape[0], 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(ids, mask, decoder_input_ids=target).logits
    torch.testing.assert_close(teacher_forced_logits(model, ids, mask, target), full, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module", params=[(0, None, False), (1, 2, False), (2, None, True)],
                ids=["post-norm", "post-norm-forced-eos", "random-untrained"])
def exported(request, tmp_path_factory, single_thread):
    """(ours, transformers' MarianMTModel) loaded from the directory our exporter wrote."""
    seed, forced, untrained = request.param
    out = tmp_path_factory.mktemp(f"seq2seq{seed}")
    model = random_model(seed, forced_eos_token_id=forced) if untrained else toy_model(seed, forced_eos_token_id=forced)
    model.save_pretrained(out)
    return MiniSeq2Seq.from_pretrained(out).eval(), transformers.MarianMTModel.from_pretrained(out).eval()


@pytest.mark.parametrize("max_new_tokens", [1, 6, 23])
def test_greedy_equals_marian_generate(exported, max_new_tokens):
    ours, reference = exported
    ids, mask = sources(seed=max_new_tokens)
    got = generate_ids(ours, ids, mask, max_new_tokens=max_new_tokens)
    expected = reference.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                                  max_new_tokens=max_new_tokens)
    assert got.tolist() == expected.tolist()


def test_the_toy_model_ends_sentences_at_varied_lengths_and_beams_differ_from_greedy(single_thread):
    """The equality tests above are not vacuous: EOS comes at several lengths, beam search differs."""
    ours = toy_model(0)
    ids, mask = sources(seed=24)
    greedy = generate_ids(ours, ids, mask, max_new_tokens=23)
    ends = {int((row == BASE["eos_token_id"]).nonzero()[0]) for row in greedy if (row == BASE["eos_token_id"]).any()}
    assert len(ends) >= 2
    assert not torch.equal(beam_search_ids(ours, ids, mask, max_new_tokens=23, num_beams=4), greedy)


@pytest.mark.parametrize("settings", [dict(num_beams=4), dict(num_beams=4, length_penalty=0.6),
                                      dict(num_beams=3, length_penalty=2.0, early_stopping=True),
                                      dict(num_beams=4, early_stopping="never")], ids=str)
@pytest.mark.parametrize("max_new_tokens", [7, 23])
def test_beam_search_equals_marian_generate(exported, settings, max_new_tokens):
    ours, reference = exported
    ids, mask = sources(seed=max_new_tokens + 1)
    got = beam_search_ids(ours, ids, mask, max_new_tokens=max_new_tokens, **settings)
    expected = reference.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                  max_new_tokens=max_new_tokens, **settings)
    assert got.tolist() == expected.tolist()


def test_one_beam_is_greedy_and_top_k_1_sampling_is_greedy(exported):
    model = exported[0]
    ids, mask = sources(3)
    greedy = generate_ids(model, ids, mask, max_new_tokens=10)
    assert beam_search_ids(model, ids, mask, num_beams=1, max_new_tokens=10).tolist() == greedy.tolist()
    assert generate_ids(model, ids, mask, max_new_tokens=10, temperature=0.7, top_k=1, seed=0).tolist() == \
        greedy.tolist()


def test_sampling_is_reproducible_with_a_seed():
    model = random_model(4)
    ids, mask = sources(4)
    first = generate_ids(model, ids, mask, max_new_tokens=12, temperature=1.0, seed=7)
    assert torch.equal(first, generate_ids(model, ids, mask, max_new_tokens=12, temperature=1.0, seed=7))
    assert not torch.equal(first, generate_ids(model, ids, mask, max_new_tokens=12, temperature=1.0, seed=8))


def test_a_source_longer_than_the_positions_is_refused():
    model = random_model(0)
    too_long = torch.full((1, BASE["max_position_embeddings"] + 1), 5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate_ids(model, too_long)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(model, too_long[:, :3], max_new_tokens=BASE["max_position_embeddings"] + 1)
