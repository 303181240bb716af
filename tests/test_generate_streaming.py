"""Streaming text never splits a UTF-8 character, and stop strings cut the stream."""

import json

import pytest
import torch

from minillama.generate import StopStrings, TextStreamer, generate, generate_text, stream_generate
from minillama.model import MiniLlama, ModelConfig

tokenizers = pytest.importorskip("tokenizers")

TEXT = "Lily met a dragon 🐉 in the café. 中文 is fun; naïve → ok ✓ 😀!"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A byte-level BPE trained on ASCII only: every non-ASCII character is 2-4 byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["Lily met a dragon in the cafe. It is fun, ok!"] * 50, trainer)
    return tokenizer


@pytest.fixture(scope="module", params=["tokenizers", "minillama"])
def tokenizer(request, hf_tokenizer):
    if request.param == "tokenizers":
        return hf_tokenizer  # decode() only: the hold-back-U+FFFD path
    from minillama.tokenizer import Tokenizer

    return Tokenizer.from_hf_dict(json.loads(hf_tokenizer.to_str()))  # decode_bytes(): the byte path


def test_the_tokenizer_splits_characters(hf_tokenizer):
    ids = hf_tokenizer.encode(TEXT).ids
    pieces = [hf_tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in piece for piece in pieces)  # decoding token by token would print garbage


def test_streaming_never_splits_a_character(tokenizer, hf_tokenizer):
    ids = hf_tokenizer.encode(TEXT).ids
    streamer = TextStreamer(tokenizer)
    pieces = [streamer.push(i) for i in ids] + [streamer.flush()]
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 20  # and it really streams


def test_an_unfinished_character_at_the_end_is_flushed(tokenizer, hf_tokenizer):
    ids = hf_tokenizer.encode("ok 🐉").ids[:-1]  # drop the dragon's last byte
    streamer = TextStreamer(tokenizer)
    text = "".join(streamer.push(i) for i in ids)
    assert text == "ok "
    assert streamer.flush().startswith("\ufffd")


def test_stop_strings_cut_and_hold_back_only_what_could_match():
    stops = StopStrings(["THE END", "\n\n"])
    assert stops.push("Once upon a T") == "Once upon a "  # "T" might start "THE END"
    assert stops.push("ime") == "Time"  # ... it did not
    assert stops.push(" THE E") == " "
    assert stops.push("ND and more") == ""
    assert stops.stopped and stops.flush() == ""
    other = StopStrings(["xyz"])
    assert other.push("abx") == "ab" and other.push("q") == "xq" and not other.stopped
    assert other.push("wx") == "w" and other.flush() == "x"


def test_stream_generate_matches_generate_and_stops(hf_tokenizer):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=hf_tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, initializer_range=0.3)
    model = MiniLlama(config).eval()
    prompt = hf_tokenizer.encode("Lily met").ids
    ids = generate(model, torch.tensor([prompt]), max_new_tokens=40, temperature=0, stop_token_ids=())
    expected = hf_tokenizer.decode(ids[0, len(prompt):].tolist())
    pieces = list(stream_generate(model, hf_tokenizer, prompt, max_new_tokens=40, temperature=0,
                                  stop_token_ids=()))
    assert "".join(pieces) == expected
    assert len(pieces) > 1
    start = next(i for i in range(5, len(expected)) if "\ufffd" not in expected[i:i + 3])
    stop = expected[start:start + 3]
    text = generate_text(model, hf_tokenizer, "Lily met", max_new_tokens=40, temperature=0, stop_token_ids=(),
                         stop_strings=[stop])
    assert text == expected[:expected.index(stop)]
    # A stop token ends the stream before it is shown.
    stop_id = int(ids[0, len(prompt) + 5])
    shown = "".join(stream_generate(model, hf_tokenizer, prompt, max_new_tokens=40, temperature=0,
                                    stop_token_ids=[stop_id]))
    first = ids[0, len(prompt):].tolist().index(stop_id)
    assert shown == hf_tokenizer.decode(ids[0, len(prompt):len(prompt) + first].tolist())
