"""Sampling, stopping, reproducibility and speculative decoding (no transformers needed)."""

from functools import partial

import helpers
import pytest
import torch

from minillama.generate import (
    SamplingConfig,
    accept_draft,
    beam_search,
    generate,
    iter_tokens,
    speculative_generate,
)
from minillama.generate.sampling import probabilities, sample_from_probs
from minillama.model import MiniLlama, ModelConfig

TINY = dict(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3)
SMALL = dict(TINY, vocab_size=128, hidden_size=48, intermediate_size=96, initializer_range=0.2)


pytestmark = pytest.mark.usefixtures("single_thread")


make_model = partial(helpers.random_model, SMALL)


@pytest.fixture(scope="module")
def model():
    return make_model()


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of observed counts against expected probabilities (cells with p > 0)."""
    n = counts.sum()
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a token with probability 0 was drawn"
    expected = n * probs[keep]
    return float(((counts[keep] - expected) ** 2 / expected).sum())


# ---- settings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("settings,message", [
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(min_p=2.0), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
])
def test_invalid_settings_are_refused(model, settings, message):
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([[1, 2]]), max_new_tokens=2, **settings)


def test_invalid_beams_and_prompts_are_refused(model):
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(model, torch.tensor([[1, 2]]), num_beams=0)
    with pytest.raises(ValueError, match="empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="left padding"):
        generate(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 0]]))


# ---- sampling ----------------------------------------------------------------------------------
def test_exponential_race_samples_the_distribution():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    g = torch.Generator().manual_seed(0)
    draws = sample_from_probs(probs.expand(20000, 5), g)
    counts = torch.bincount(draws, minlength=5).float()
    assert chi_square(counts, probs) < 16.3  # chi2(3 dof) at p = 0.001


def test_fixed_seed_is_reproducible(model):
    prompt = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    settings = dict(max_new_tokens=20, temperature=0.9, top_k=40, top_p=0.95, stop_token_ids=())
    a = generate(model, prompt, mask, seed=123, **settings)
    b = generate(model, prompt, mask, seed=123, **settings)
    c = generate(model, prompt, mask, seed=124, **settings)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # An explicit generator is the same as its seed.
    d = generate(model, prompt, mask, generator=torch.Generator().manual_seed(123), **settings)
    assert torch.equal(a, d)


def test_temperature_zero_is_argmax_and_top_k_one_is_greedy(model):
    prompt = torch.tensor([[3, 4, 5]])
    greedy = generate(model, prompt, max_new_tokens=16, temperature=0, stop_token_ids=())
    top1 = generate(model, prompt, max_new_tokens=16, temperature=1.5, top_k=1, seed=0, stop_token_ids=())
    assert torch.equal(greedy, top1)


def test_filters_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda **kw: (probabilities(logits, SamplingConfig(**kw)) > 0).int().tolist()[0]  # noqa: E731
    assert kept(top_k=2) == [1, 1, 0, 0]
    assert kept(top_p=0.8) == [1, 1, 0, 0]  # 0.5 + 0.3 reaches 0.8
    assert kept(top_p=0.81) == [1, 1, 1, 0]
    assert kept(min_p=0.3) == [1, 1, 1, 0]  # 0.15 >= 0.3 * 0.5
    assert kept(min_p=0.31) == [1, 1, 0, 0]
    assert kept(temperature=0) == [1, 0, 0, 0]


# ---- stopping ----------------------------------------------------------------------------------
def test_stop_tokens_end_rows_and_pad_them(model):
    prompt = torch.tensor([[5, 6, 7], [9, 10, 11]])
    free = generate(model, prompt, max_new_tokens=30, temperature=0, stop_token_ids=())
    stop = int(free[0, 3 + 4])  # row 0's fifth new token
    out = generate(model, prompt, max_new_tokens=30, temperature=0, stop_token_ids=[stop], pad_token_id=99)
    first = int((free[0, 3:] == stop).nonzero()[0])
    assert torch.equal(out[0, 3:3 + first + 1], free[0, 3:3 + first + 1])  # the stop token is kept
    assert (out[0, 3 + first + 1:] == 99).all()
    if (free[1, 3:] == stop).any():
        assert out.shape[1] <= free.shape[1]
    else:
        assert torch.equal(out[1], free[1])
    # Once every row has stopped, generation ends.
    single = generate(model, prompt[:1], max_new_tokens=30, temperature=0, stop_token_ids=[stop])
    assert single.shape[1] == 3 + first + 1


def test_eos_from_the_config_stops_by_default():
    model = make_model()
    free = generate(model, torch.tensor([[1, 2]]), max_new_tokens=20, temperature=0, stop_token_ids=())
    model.config.eos_token_id = int(free[0, 5])
    out = generate(model, torch.tensor([[1, 2]]), max_new_tokens=20, temperature=0)
    assert out.shape[1] < free.shape[1] and int(out[0, -1]) == model.config.eos_token_id


def test_iter_tokens_streams_the_same_tokens(model):
    prompt = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        steps = list(iter_tokens(model, prompt, max_new_tokens=12, sampling=SamplingConfig(temperature=0)))
    full = generate(model, prompt, max_new_tokens=12, temperature=0, stop_token_ids=())
    assert torch.equal(torch.stack(steps, 1), full[:, 3:])


# ---- speculative decoding ----------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 6])
def test_speculative_greedy_is_the_target_greedy_output(model, k):
    draft = make_model(seed=7, num_hidden_layers=1)
    prompt = torch.tensor([[5, 6, 7, 8]])
    expected = generate(model, prompt, max_new_tokens=48, temperature=0, stop_token_ids=())
    for helper in (draft, model):  # a poor draft (mostly rejected) and a perfect one (all accepted)
        out, stats = speculative_generate(model, helper, prompt, max_new_tokens=48, temperature=0,
                                          num_draft_tokens=k, stop_token_ids=())
        assert torch.equal(out, expected)
    assert stats.acceptance_rate == 1.0 and stats.rounds == -(-48 // (k + 1))


def test_speculative_stops_at_stop_tokens(model):
    draft = make_model(seed=7, num_hidden_layers=1)
    prompt = torch.tensor([[5, 6, 7, 8]])
    free = generate(model, prompt, max_new_tokens=40, temperature=0, stop_token_ids=())
    stop = int(free[0, 4 + 9])
    expected = generate(model, prompt, max_new_tokens=40, temperature=0, stop_token_ids=[stop])
    out, _ = speculative_generate(model, draft, prompt, max_new_tokens=40, temperature=0, num_draft_tokens=4,
                                  stop_token_ids=[stop])
    assert torch.equal(out, expected)


def test_speculative_sampling_is_reproducible(model):
    draft = make_model(seed=7, num_hidden_layers=1)
    settings = dict(max_new_tokens=24, temperature=0.8, top_p=0.9, repetition_penalty=1.1, stop_token_ids=())
    a, _ = speculative_generate(model, draft, torch.tensor([[1, 2]]), seed=5, **settings)
    b, _ = speculative_generate(model, draft, torch.tensor([[1, 2]]), seed=5, **settings)
    assert torch.equal(a, b) and a.shape == (1, 26)


def test_acceptance_rule_preserves_the_target_distribution():
    """Synthetic p, q on 8 tokens: the first emitted token must follow p_1 and, when the first draft
    token was kept, the second must follow p_2, whatever the draft proposes."""
    g = torch.Generator().manual_seed(0)
    V, k, draws = 8, 3, 12000
    target = torch.softmax(torch.randn(k + 1, V, generator=g) * 1.5, -1)
    draft = torch.softmax(torch.randn(k, V, generator=g) * 1.5, -1)
    first = torch.zeros(V)
    second = torch.zeros(V)
    for _ in range(draws):
        guess = torch.stack([torch.multinomial(draft[i], 1, generator=g)[0] for i in range(k)])
        n, token = accept_draft(guess, draft, target, g)
        emitted = guess[:n].tolist() + [token]
        first[emitted[0]] += 1
        if n >= 1:
            second[emitted[1]] += 1
    critical = 24.3  # chi2(7 dof) at p = 0.001
    assert chi_square(first, target[0]) < critical
    assert chi_square(second, target[1]) < critical
    # The test has power: the draft's own distribution (what accepting everything would give) fails it.
    assert draws * ((draft[0] - target[0]) ** 2 / target[0]).sum() > 20 * critical


def test_speculative_sampling_end_to_end_matches_the_target():
    """Real models on a 12-token vocabulary: the first generated token (already decided by the
    acceptance rule, since the draft guesses from the prompt on) follows the target's softmax."""
    target = MiniLlama(ModelConfig(**TINY)).eval()
    torch.manual_seed(3)
    draft = MiniLlama(ModelConfig(**{**TINY, "num_hidden_layers": 1})).eval()
    prompt = torch.tensor([[1, 5, 2]])
    with torch.no_grad():
        p = torch.softmax(target(prompt).logits[0, -1] / 0.9, -1)
        q = torch.softmax(draft(prompt).logits[0, -1] / 0.9, -1)
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(12)
    draws = 1500
    for _ in range(draws):
        out, _ = speculative_generate(target, draft, prompt, max_new_tokens=2, temperature=0.9,
                                      num_draft_tokens=2, generator=g, stop_token_ids=())
        counts[out[0, 3]] += 1
    critical = 31.3  # chi2(11 dof) at p = 0.001
    assert chi_square(counts, p) < critical
    assert draws * ((q - p) ** 2 / p).sum() > 5 * critical  # a draft-distributed output would fail


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, imported by inductor
def test_compiled_decode_step_gives_the_same_tokens():
    torch.manual_seed(0)
    model = MiniLlama(ModelConfig(**{**SMALL, "num_hidden_layers": 1})).eval()
    prompt = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    eager = generate(model, prompt, mask, max_new_tokens=12, temperature=0, stop_token_ids=())
    compiled = generate(model, prompt, mask, max_new_tokens=12, temperature=0, stop_token_ids=(),
                        compile=True)
    assert torch.equal(eager, compiled)
    # laid out for compiled decoding: one row goes through DecodingLinear's reduction form
    from minillama.generate import prepare_for_decoding

    prepare_for_decoding(model, compiled=True)
    single = generate(model, prompt[1:], max_new_tokens=12, temperature=0, stop_token_ids=(), compile=True)
    assert torch.equal(single, eager[1:])


def test_prepared_for_decoding_gives_the_same_logits_and_state(model):
    from minillama.generate import prepare_for_decoding
    from minillama.generate.decode import DecodingLinear

    prompt = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    with torch.no_grad():
        expected = model(prompt).logits
        state = {k: v.clone() for k, v in model.state_dict().items()}
        prepared = make_model()
        torch.set_num_threads(2)  # two blocks per weight; the fixture restores one thread
        try:
            prepare_for_decoding(prepared)
        finally:
            torch.set_num_threads(1)
        assert isinstance(prepared.lm_head, DecodingLinear) and prepared.lm_head.parts == 2
        assert not prepared.lm_head.weight.is_contiguous()  # column-major now
        torch.testing.assert_close(prepared(prompt).logits, expected, atol=1e-5, rtol=1e-5)  # (B, T, V) rows
        torch.testing.assert_close(prepared(prompt[:1, :1]).logits, expected[:1, :1], atol=1e-5, rtol=1e-5)
        prepare_for_decoding(prepared, compiled=True)  # back to row-major, for compiled decode steps
        assert prepared.lm_head.weight.is_contiguous()
        torch.testing.assert_close(prepared(prompt).logits, expected, atol=1e-5, rtol=1e-5)
    assert prepared.state_dict().keys() == state.keys()
    assert all(torch.equal(prepared.state_dict()[k], v) for k, v in state.items())
