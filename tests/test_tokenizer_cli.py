"""`minillama tokenizer train | encode | decode | info` through `minillama.cli.main`."""

from __future__ import annotations

import gzip

import pytest

from minillama.assets import asset_path
from minillama.cli import main
from minillama.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    with gzip.open(asset_path("tinystories/tinystories_valid.txt.gz"), "rt", encoding="utf-8") as f:
        text = f.read(60_000)
    path = tmp_path_factory.mktemp("cli") / "stories.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_train_encode_decode_info(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "400", "--out", str(out)]) == 0
    assert "saved 400-token tokenizer" in capsys.readouterr().out
    tokenizer = Tokenizer.from_pretrained(out)
    assert tokenizer.vocab_size == 400
    assert tokenizer.special_tokens == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

    text = "Once upon a time, Lily saw a cat.<|endoftext|>"
    assert main(["tokenizer", "encode", "-t", str(out), text]) == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == tokenizer.encode(text)

    assert main(["tokenizer", "decode", "-t", str(out), *ids]) == 0
    assert capsys.readouterr().out == text + "\n"
    assert main(["tokenizer", "decode", "-t", str(out), "--skip-special-tokens", *ids]) == 0
    assert capsys.readouterr().out == "Once upon a time, Lily saw a cat.\n"

    assert main(["tokenizer", "encode", "-t", str(out), "--file", str(corpus), "--show-tokens"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(tokenizer.encode(corpus.read_text()))

    assert main(["tokenizer", "info", "-t", str(out)]) == 0
    assert tokenizer.fingerprint() in capsys.readouterr().out


def test_train_options(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--input", str(corpus), str(corpus), "--vocab-size", "300",
            "--special-tokens", "<|endoftext|>", "--out", str(out), "--workers", "1",
            "--model-max-length", "256"]
    assert main(argv) == 0
    tokenizer = Tokenizer.from_pretrained(out)
    assert tokenizer.special_tokens == ["<|endoftext|>"] and tokenizer.vocab_size == 300
    assert tokenizer.model_max_length == 256 and tokenizer.chat_template is None
    pytest.importorskip("tokenizers")
    assert main([*argv, "--engine", "tokenizers"]) == 0
    assert Tokenizer.from_pretrained(out).vocab_size == 300


def test_errors_are_one_line_and_write_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text then \xff\xfe bad bytes")
    for argv, message in [
        (["--input", str(tmp_path / "missing.txt")], "input file not found"),
        (["--input", str(bad)], "not valid UTF-8"),
        (["--input", str(corpus), "--vocab-size", "100"], "too small"),
    ]:
        assert main(["tokenizer", "train", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: ") and err.count("\n") == 1
        assert not out.exists() and list(tmp_path.glob(".tok*")) == []
    assert main(["tokenizer", "train", "--input", str(bad), "--utf8-errors", "replace", "--vocab-size", "270",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "-t", str(tmp_path / "nowhere"), "hi"]) == 2
    assert "no tokenizer" in capsys.readouterr().err
    assert main(["tokenizer", "decode", "-t", str(out), "1", "x"]) == 2
    assert "must be integers" in capsys.readouterr().err
    assert main(["tokenizer", "decode", "-t", str(out), "99999"]) == 2
    assert "not in the vocabulary" in capsys.readouterr().err
