"""Encoding and decoding: our ids equal those of `tokenizers` and `transformers` loading our saved
files, on the shipped TinyStories text and on hard strings; file formats round-trip."""

from __future__ import annotations

import gzip
import itertools
import json
import pickle
import random
import tracemalloc

import pytest

from minillama.assets import asset_path
from minillama.errors import MiniLlamaError
from minillama.files import MANIFEST, verify_manifest, write_manifest
from minillama.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer, train_tokenizer
from minillama.tokenizer import tokenizer as tokenizer_module
from minillama.tokenizer.pretokenize import bytes_to_token_str

HARD_STRINGS = [
    "",
    " ",
    "\n",
    "Hello, world! It's Lily's cat; they'll say: \"we've\" & THEY'RE 'quoted'.",
    "héllo wörld, naïve café, Ærøskøbing, Ελληνικά, русский текст",
    "你好，世界。日本語のテキスト、한국어 텍스트",
    "emoji 🤖🎉 family 👨\u200d👩\u200d👧\u200d👦 flags 🇫🇷🇯🇵 skin 👍🏽 keycap 1\ufe0f\u20e3",
    "mixed: abcдеф中文123٣٤٥ العربية עברית हिन्दी ไทย",
    "spaces:   three,    four\t\ttabs\t \t mixed \n\n\n newlines\r\n\r\nwindows \u00a0nbsp\u3000ideographic",
    "   leading and trailing   ",
    "\t\n \x0b\x0c\r\x1c\x1d\x1e\x1f\x85\u2028\u2029 all kinds of whitespace",
    "control \x00\x01\x02\x07\x08\x1b[31m\x7f chars \ufeff bom \u200b zwsp \u200e lrm",
    "numbers 0 12 345 6789 3.14159 1,000,000 ½ ² Ⅻ ①",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937 and precomposed é ä",
    "punctuation!!! ??? ... --- *** ((( ))) [[[ ]]] {{{ }}} \"\"\" ''' ``` ~~~",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|><|im_start|><|im_end|>",
    "before<|endoftext|>after",
    " <|endoftext|> spaced <|im_start|>user\nhi<|im_end|>\n",
    "<|endoftext|\n<|endoftext <endoftext|> |endoftext|> <||> <|im_start|im_end|>",
    "a" * 300 + " " + "ab" * 200 + "\n" * 50 + " " * 70 + "x",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The project's default: vocab 4096 on the shipped TinyStories sample, trained once."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    tokenizer = train_tokenizer(None, 4096, DEFAULT_SPECIAL_TOKENS, out)
    return tokenizer, out


@pytest.fixture(scope="module")
def stories() -> str:
    with gzip.open(asset_path("tinystories/tinystories_valid.txt.gz"), "rt", encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def hf_tokenizer(trained):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(trained[1] / "tokenizer.json"))


def test_vocab_layout(trained):
    tokenizer, _ = trained
    assert tokenizer.vocab_size == 4096
    assert tokenizer.special_tokens == list(DEFAULT_SPECIAL_TOKENS)
    assert [tokenizer.token_to_id(t) for t in DEFAULT_SPECIAL_TOKENS] == [0, 1, 2]
    assert tokenizer.eos_token_id == 0 and tokenizer.pad_token_id == 0 and tokenizer.bos_token_id is None
    assert all(tokenizer.id_to_bytes(3 + b) == bytes([b]) for b in range(256))
    assert tokenizer.token_to_id("Ġthe") is not None and tokenizer.token_to_id("no such token") is None
    assert tokenizer.id_to_token(tokenizer.token_to_id("Ġthe")) == "Ġthe"


def test_same_ids_as_tokenizers_and_transformers(trained, stories, hf_tokenizer):
    transformers = pytest.importorskip("transformers")
    tokenizer, directory = trained
    auto = transformers.AutoTokenizer.from_pretrained(directory)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    texts = [*HARD_STRINGS, stories[:100_000], "".join(HARD_STRINGS)]
    for text in texts:
        ours = tokenizer.encode(text)
        assert ours == hf_tokenizer.encode(text, add_special_tokens=False).ids, text[:60]
        assert ours == auto(text)["input_ids"] == fast(text)["input_ids"], text[:60]
        assert tokenizer.decode(ours) == text
    assert auto.eos_token_id == tokenizer.eos_token_id and auto.pad_token_id == tokenizer.pad_token_id
    assert len(auto) == tokenizer.vocab_size
    ids = tokenizer.encode("The end.<|endoftext|>")
    assert auto.decode(ids) == "The end.<|endoftext|>" == tokenizer.decode(ids)
    skipped = tokenizer.decode(ids, skip_special_tokens=True)
    assert auto.decode(ids, skip_special_tokens=True) == skipped == "The end."


def test_encode_batch_backends_agree(trained, stories):
    tokenizer, _ = trained
    texts = [*HARD_STRINGS, *stories.split("<|endoftext|>")[:200]]
    expected = [tokenizer.encode(t) for t in texts]
    assert tokenizer.encode_batch(texts) == expected
    assert tokenizer.encode_batch(texts, backend="tokenizers") == expected
    with pytest.raises(ValueError, match="backend"):
        tokenizer.encode_batch(texts, backend="rust")


def test_roundtrip_random_unicode(trained, hf_tokenizer):
    tokenizer, _ = trained
    rng = random.Random(0)
    alphabet = "ab xyz\n\t  '.,!0123éü中文🙂\u0301\x00<|>endoftext" + "".join(DEFAULT_SPECIAL_TOKENS)
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert ids == hf_tokenizer.encode(text, add_special_tokens=False).ids, repr(text)


def test_decode_invalid_utf8_gives_replacement_char(trained, hf_tokenizer):
    tokenizer, _ = trained
    byte = {b: 3 + b for b in range(256)}  # single bytes sit after the 3 special tokens
    euro = "€".encode()  # 3 bytes
    assert tokenizer.decode([byte[euro[0]], byte[euro[1]]]) == "\ufffd"
    assert tokenizer.decode([byte[0xFF], byte[ord("a")]]) == "\ufffda"
    assert tokenizer.decode([byte[0x80]]) == "\ufffd"
    assert tokenizer.decode([byte[b] for b in euro]) == "€"
    for ids in ([byte[0xFF], byte[ord("a")]], [byte[euro[0]], byte[euro[1]], byte[ord("x")]], [byte[0xC3]]):
        assert tokenizer.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=False)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])


def test_lone_surrogate_is_a_value_error(trained):
    with pytest.raises(ValueError):
        trained[0].encode("bad \ud800 surrogate")


def test_overlapping_special_tokens_longest_wins(trained, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    base = trained[0]
    model_vocab = {i: b for i, b in base.vocab.items() if i >= 3}
    specials = ["<|a|>", "<|a|><|b|>", "<|b|>", "<|ab", "ab|>"]
    tokenizer = Tokenizer(model_vocab, base.merges, specials)
    sid = {t: tokenizer.token_to_id(t) for t in specials}
    assert sorted(sid.values()) == list(range(4096, 4101))
    ids = tokenizer.encode("x<|a|><|b|>y<|a|>z<|b|><|b|><|a|<|ab|>")
    specials_seen = [i for i in ids if i >= 4096]
    assert specials_seen == [sid["<|a|><|b|>"], sid["<|a|>"], sid["<|b|>"], sid["<|b|>"], sid["<|ab"]]
    tokenizer.save_pretrained(tmp_path / "overlap")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "overlap" / "tokenizer.json"))
    for text in ["x<|a|><|b|>y<|a|>z<|b|><|b|><|a|<|ab|>", "<|a|><|a|><|b|><|b|>", "ab|><|ab|>",
                 *HARD_STRINGS]:
        assert tokenizer.encode(text) == hf.encode(text, add_special_tokens=False).ids, text[:40]


def test_encode_iterable_matches_encode(trained, stories, monkeypatch):
    tokenizer, _ = trained
    text = stories[:60_000] + "".join(HARD_STRINGS) * 3
    expected = tokenizer.encode(text)
    rng = random.Random(1)
    for chunk in (100, 4000, 1 << 16):
        monkeypatch.setattr(tokenizer_module, "_STREAM_CHUNK", chunk)
        cuts = sorted(rng.sample(range(1, len(text)), 2000))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert list(tokenizer.encode_iterable(pieces)) == expected
    assert list(tokenizer.encode_iterable(text.splitlines(keepends=True))) == expected
    assert list(tokenizer.encode_iterable(iter(text))) == expected  # one character at a time


def test_encode_iterable_is_lazy_and_constant_memory(trained, stories):
    tokenizer, _ = trained
    lines = stories.splitlines(keepends=True)[:2000]

    def endless():
        while True:
            yield from lines

    # An endless input: only a bounded prefix is ever read.
    first = list(itertools.islice(tokenizer.encode_iterable(endless()), 50_000))
    assert first[:1000] == tokenizer.encode("".join(lines))[:1000]

    def repeated(times):
        for _ in range(times):
            yield from lines

    def peak_bytes(times):
        tokenizer.encode("".join(lines))  # warm the cache so it does not count as growth
        tracemalloc.start()
        count = sum(1 for _ in tokenizer.encode_iterable(repeated(times)))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return count, peak

    count_small, peak_small = peak_bytes(1)
    count_large, peak_large = peak_bytes(8)  # about 2 MB of text
    assert count_large > 7 * count_small
    assert peak_large < 1.5 * peak_small + 200_000  # does not grow with the input
    assert peak_large < 1 << 20


def test_save_load_roundtrip_and_fingerprint(trained, tmp_path):
    tokenizer, directory = trained
    for source in (directory, directory / "tokenizer.json"):
        loaded = Tokenizer.from_pretrained(source)
        assert loaded.fingerprint() == tokenizer.fingerprint()
        assert loaded.special_tokens == tokenizer.special_tokens
        assert loaded.eos_token_id == 0 and loaded.pad_token_id == 0
        assert loaded.encode(HARD_STRINGS[-2]) == tokenizer.encode(HARD_STRINGS[-2])
    assert Tokenizer.from_pretrained(directory).chat_template == tokenizer.chat_template
    assert verify_manifest(directory, required=True)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["eos_token"] == config["pad_token"] == "<|endoftext|>" and "chat_template" in config
    # The fingerprint follows the ids, not the chat template or the output file.
    other = Tokenizer(tokenizer.vocab, tokenizer.merges[:-1], tokenizer.special_tokens)
    assert other.fingerprint() != tokenizer.fingerprint()
    renamed = Tokenizer(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens, chat_template=None)
    assert renamed.fingerprint() == tokenizer.fingerprint()


def test_pickle_roundtrip(trained):
    tokenizer, _ = trained
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.fingerprint() == tokenizer.fingerprint()
    assert clone.encode(HARD_STRINGS[6]) == tokenizer.encode(HARD_STRINGS[6])


def test_save_into_existing_dir_updates_its_manifest(trained, tmp_path):
    tokenizer, _ = trained
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    write_manifest(model_dir)
    tokenizer.save_pretrained(model_dir)
    assert verify_manifest(model_dir, required=True)
    assert "tokenizer.json" in (model_dir / MANIFEST).read_text()
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        [MANIFEST, "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])


def test_gpt2_vocab_and_merges_files(trained, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer, _ = trained
    vocab_json = tmp_path / "vocab.json"
    merges_txt = tmp_path / "merges.txt"
    vocab = {bytes_to_token_str(b): i for i, b in tokenizer.vocab.items()}
    vocab_json.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_txt.write_text("#version: 0.2\n" + "".join(
        f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}\n" for a, b in tokenizer.merges), encoding="utf-8")
    loaded = Tokenizer.from_files(vocab_json, merges_txt, list(DEFAULT_SPECIAL_TOKENS))
    assert loaded.fingerprint() == tokenizer.fingerprint()
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(vocab_json), str(merges_txt)))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in HARD_STRINGS:
        if "<|" not in text:
            assert loaded.encode(text) == hf.encode(text).ids


def test_qwen2_style_split_pretokenizer_and_nfc(trained, tmp_path, monkeypatch):
    """A tokenizer.json with a Split regex + ByteLevel(use_regex=false) and NFC (Qwen2's layout)."""
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer, _ = trained
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    data = tokenizer.to_hf_dict()
    data["normalizer"] = {"type": "NFC"}
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    ours = Tokenizer.from_pretrained(path)
    hf = tokenizers.Tokenizer.from_file(str(path))
    for text in HARD_STRINGS:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids, text[:40]
    assert ours.to_hf_dict()["pre_tokenizer"] == data["pre_tokenizer"]
    # Streaming is exact here too (its cut points differ from the GPT-2 pattern's).
    monkeypatch.setattr(tokenizer_module, "_STREAM_CHUNK", 200)  # many cuts
    text = "".join(HARD_STRINGS) * 5 + "cafe\u0301 e\u0301\u0301 ...\n\n \n" * 100
    expected = hf.encode(text, add_special_tokens=False).ids
    rng = random.Random(2)
    cuts = sorted(rng.sample(range(1, len(text)), 3000))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert list(ours.encode_iterable(pieces)) == expected


def test_loading_bad_files_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text('{"model": {')
    with pytest.raises(MiniLlamaError, match="not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "WordPiece", "vocab": {}}}')
    with pytest.raises(MiniLlamaError, match="only BPE"):
        Tokenizer.from_pretrained(tmp_path)


def test_constructor_checks():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="single bytes"):
        Tokenizer({i: bytes([i]) for i in range(255)}, [])
    with pytest.raises(ValueError, match="not in the vocab"):
        Tokenizer(vocab, [(b"a", b"b")])
    with pytest.raises(ValueError, match="eos_token"):
        Tokenizer(vocab, [], ["<|x|>"], eos_token="<|y|>")
    tokenizer = Tokenizer(vocab, [], ["<|x|>"])
    assert tokenizer.eos_token_id is None and tokenizer.chat_template is None
    assert tokenizer.encode("ab<|x|>") == [97, 98, 256]
