"""`minillama tokenizer extend`: new tokens learned on Chinese, every old id and merge rank kept."""

from __future__ import annotations

import gzip
import random

import pytest

from minillama.assets import asset_path
from minillama.cli import main
from minillama.data.sources import DATASETS
from minillama.errors import MiniLlamaError
from minillama.tokenizer import Tokenizer
from minillama.tokenizer.extend import extend_tokenizer


def _english(chars: int) -> str:
    with gzip.open(asset_path("tinystories/tinystories_valid.txt.gz"), "rt", encoding="utf-8") as f:
        return f.read(chars)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """(old English tokenizer dir, extended dir, Chinese training file)."""
    root = tmp_path_factory.mktemp("extend")
    english = root / "stories.txt"
    english.write_text(_english(60_000), encoding="utf-8")
    chinese = root / "zh.txt"
    sentences = list(DATASETS["tatoeba-zh"].train.documents())
    chinese.write_text("\n".join(sentences[:6000]) + "\n", encoding="utf-8")
    assert main(["tokenizer", "train", "--input", str(english), "--vocab-size", "400", "--workers", "1",
                 "--out", str(root / "en")]) == 0
    assert main(["tokenizer", "extend", "-t", str(root / "en"), "--input", str(chinese), "--add", "300",
                 "--out", str(root / "ext")]) == 0
    return root / "en", root / "ext", chinese


def _chinese_validation() -> str:
    return "\n".join(DATASETS["tatoeba-zh"].val.documents())


def test_old_ids_and_ranks_are_kept_and_new_tokens_appended(tokenizers):
    old, new = (Tokenizer.from_pretrained(d) for d in tokenizers[:2])
    assert new.vocab_size == old.vocab_size + 300
    assert {i: new.vocab[i] for i in old.vocab} == old.vocab
    assert new.merges[:len(old.merges)] == old.merges
    assert set(new.vocab.values()) - set(old.vocab.values()) == {new.vocab[i] for i in range(400, 700)}
    assert len(set(new.vocab.values())) == new.vocab_size  # no token twice
    assert all(not new.vocab[i].isascii() for i in range(400, 700))
    assert new.special_tokens == old.special_tokens and new.eos_token_id == old.eos_token_id


def test_english_gives_exactly_the_old_ids_and_chinese_fewer_tokens(tokenizers):
    old, new = (Tokenizer.from_pretrained(d) for d in tokenizers[:2])
    english = _english(200_000)
    assert new.encode(english) == old.encode(english)
    chinese = _chinese_validation()
    before, after = len(old.encode(chinese)), len(new.encode(chinese))
    assert after < before / 2, (before, after)  # held-out sentences: the merges generalise
    assert new.decode(new.encode(chinese)) == chinese


def _random_text(rng: random.Random, length: int) -> str:
    ranges = [(0x20, 0x7E), (0x4E00, 0x9FFF), (0x3000, 0x303F), (0xA0, 0x24F), (0x1F300, 0x1F64F),
              (0x0, 0x10FFFF)]
    chars = []
    for _ in range(length):
        lo, hi = rng.choice(ranges)
        c = rng.randint(lo, hi)
        chars.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "?")
    return "".join(chars)


def test_tokenizers_and_autotokenizer_give_our_ids_and_decoding_round_trips(tokenizers):
    hf = pytest.importorskip("tokenizers")
    tokenizer = Tokenizer.from_pretrained(tokenizers[1])
    loaded = hf.Tokenizer.from_file(str(tokenizers[1] / "tokenizer.json"))
    rng = random.Random(0)
    texts = [_chinese_validation()[:3000], _english(3000), "Tom说：“我想喝茶。”<|endoftext|>Lily smiled. 😀",
             *(_random_text(rng, 200) for _ in range(30))]
    for text in texts:
        ids = tokenizer.encode(text)
        assert loaded.encode(text, add_special_tokens=False).ids == ids
        assert tokenizer.decode(ids) == text
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(tokenizers[1])
    assert auto.encode(texts[2], add_special_tokens=False) == tokenizer.encode(texts[2])
    assert len(auto) == tokenizer.vocab_size


def test_allow_ascii_may_learn_ascii_tokens(tokenizers, tmp_path):
    old_dir, _, chinese = tokenizers
    strict = extend_tokenizer(old_dir, [chinese], 50)
    assert all(not strict.vocab[i].isascii() for i in range(400, strict.vocab_size))
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("Tomorrow Tom tomatoes 12345 67890\n" * 200 + chinese.read_text(encoding="utf-8")[:2000],
                     encoding="utf-8")
    loose = extend_tokenizer(old_dir, [mixed], 50, allow_ascii=True)
    assert any(loose.vocab[i].isascii() for i in range(400, loose.vocab_size))


def test_no_new_token_and_add_zero_write_nothing(tokenizers, tmp_path):
    old_dir = tokenizers[0]
    english = tmp_path / "english.txt"
    english.write_text(_english(20_000), encoding="utf-8")
    with pytest.raises(MiniLlamaError, match="yields no token"):
        extend_tokenizer(old_dir, [english], 100, tmp_path / "out")
    with pytest.raises(MiniLlamaError, match="at least 1"):
        extend_tokenizer(old_dir, [tokenizers[2]], 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_default_corpus_is_the_tatoeba_chinese_training_split(tokenizers, tmp_path, capsys):
    assert main(["tokenizer", "extend", "-t", str(tokenizers[0]), "--add", "40", "--out", str(tmp_path / "t")]) == 0
    assert "40 new tokens, ids 400..439" in capsys.readouterr().out
    assert "我" in Tokenizer.from_pretrained(tmp_path / "t").decode(list(range(400, 440)))
