"""Corpus preparation: formats, token ids against the `tokenizers` runtime, idempotence,
atomicity, clear errors, and the `minillama prepare` command."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from minillama.assets import asset_path
from minillama.cli import main
from minillama.data import (
    DATASETS,
    TokenFile,
    dataset_text_files,
    load_documents,
    prepare_dataset,
    tokenizer_fingerprint,
)
from minillama.data import prepare as prepare_module
from minillama.data.tokenfile import TokenFileWriter
from minillama.errors import MiniLlamaError

EOT = "<|endoftext|>"
SPECIALS = [EOT, "<|im_start|>", "<|im_end|>"]


def sample_stories(split: str = "train") -> list[str]:
    """The shipped stories, split independently of the code under test."""
    name = "tinystories_train.txt.gz" if split == "train" else "tinystories_valid.txt.gz"
    text = gzip.open(asset_path(f"tinystories/{name}"), "rt", encoding="utf-8").read()
    return [story.strip() for story in text.split(EOT) if story.strip()]


@pytest.fixture(scope="module")
def stories() -> list[str]:
    return sample_stories()[:240]


def train_bpe(directory: Path, texts: list[str], vocab_size: int = 400) -> Path:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOT}))
    return directory


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, stories) -> Path:
    return train_bpe(tmp_path_factory.mktemp("tok"), stories)


def reference_ids(tok_dir: Path, docs: list[str]) -> np.ndarray:
    """What the tokenizers runtime gives: each document's ids, then EOS."""
    tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eos = tokenizer.token_to_id(EOT)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(docs, add_special_tokens=False):
        ids += encoding.ids + [eos]
    return np.array(ids)


def assert_tokens(path: Path, tok_dir: Path, docs: list[str]) -> None:
    np.testing.assert_array_equal(TokenFile(path).tokens, reference_ids(tok_dir, docs))


def split_docs(docs: list[str], fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """The documented rule: document i is held out when floor((i + 1) * f) > floor(i * f)."""
    held_out = [math.floor((i + 1) * fraction) > math.floor(i * fraction) for i in range(len(docs))]
    return ([d for d, v in zip(docs, held_out, strict=True) if not v],
            [d for d, v in zip(docs, held_out, strict=True) if v])


def prepare(tok_dir, dataset, out, **kwargs) -> dict:
    kwargs.setdefault("num_workers", 1)
    kwargs.setdefault("progress", False)
    return prepare_dataset(tok_dir, dataset, out, **kwargs)


# --- the real reference: the shipped sample -----------------------------------------------------


def test_sample_token_ids_equal_the_tokenizers_runtime(tok_dir, tmp_path):
    meta = prepare(tok_dir, "tinystories-sample", tmp_path / "out")
    train, val = sample_stories("train"), sample_stories("val")
    assert (meta["train_documents"], meta["val_documents"]) == (5440, 284)
    for split, docs in (("train", train), ("val", val)):
        token_file = TokenFile(tmp_path / "out" / f"{split}.bin")
        assert token_file.dtype == np.uint16
        np.testing.assert_array_equal(token_file.tokens, reference_ids(tok_dir, docs))
        assert meta[f"{split}_tokens"] == len(token_file)
        assert meta[f"{split}_bytes"] == sum(len(d.encode("utf-8")) for d in docs)
    assert meta["tokenizer_hash"] == tokenizer_fingerprint(tok_dir)
    assert meta["bytes_per_token"] == pytest.approx(meta["train_bytes"] / meta["train_tokens"])
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == meta


def test_tokenizer_fingerprint_is_the_tokenizers_own(tmp_path, stories):
    tokenizer_package = pytest.importorskip("minillama.tokenizer")
    Tokenizer = tokenizer_package.Tokenizer

    directory = tmp_path / "tok"
    text = write_text(tmp_path / "stories.txt", "".join(f"{s}\n{EOT}\n" for s in stories[:50]))
    tokenizer_package.train_tokenizer(text, vocab_size=300, out_dir=directory)
    assert tokenizer_fingerprint(directory) == Tokenizer.from_pretrained(directory).fingerprint()
    reformatted = json.dumps(json.loads((directory / "tokenizer.json").read_text()), indent=4)
    (directory / "tokenizer.json").write_text(reformatted)
    assert tokenizer_fingerprint(directory) == Tokenizer.from_pretrained(directory).fingerprint()


def test_worker_processes_give_the_same_files(tok_dir, tmp_path, stories, monkeypatch):
    source = write_jsonl(tmp_path / "d.jsonl", stories)
    prepare(tok_dir, source, tmp_path / "serial")
    monkeypatch.setattr(prepare_module, "CHUNK_CHARS", 20_000)  # many chunks in flight
    prepare(tok_dir, source, tmp_path / "parallel", num_workers=2)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()


# --- formats --------------------------------------------------------------------------------------


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    lines = "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(lines)
    return path


def write_text(path: Path, text: str) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


def write_parquet(path: Path, docs: list[str], field: str = "text") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({field: docs}), path, row_group_size=50)
    return path


def flat(docs: list[str]) -> list[str]:
    """Stories with their paragraphs joined, so a blank line can separate documents."""
    return [" ".join(d.split()) for d in docs]


FORMATS = {
    "eot-lines.txt": lambda p, d: write_text(p, "".join(f"{x}\n{EOT}\n" for x in d)),
    "eot-lines.txt.gz": lambda p, d: write_text(p, "".join(f"{x}\n{EOT}\n" for x in d)),
    "eot-inline.txt": lambda p, d: write_text(p, EOT.join(d)),
    "blank-lines.txt": lambda p, d: write_text(p, "\n\n".join(flat(d)) + "\n"),
    "records.jsonl": lambda p, d: write_jsonl(p, d),
    "records.jsonl.gz": lambda p, d: write_jsonl(p, d),
    "table.parquet": lambda p, d: write_parquet(p, d),
}


@pytest.mark.parametrize("name", FORMATS)
def test_formats_yield_the_documents(tmp_path, stories, name):
    path = FORMATS[name](tmp_path / name, stories)
    expected = flat(stories) if name.startswith("blank") else stories
    assert list(load_documents(path)) == expected


def test_text_separators_are_configurable(tmp_path):
    path = write_text(tmp_path / "t.txt", "one\ntwo\n\nthree\n")
    assert list(load_documents(path, doc_separator="line")) == ["one", "two", "three"]
    assert list(load_documents(path, doc_separator="blank-line")) == ["one\ntwo", "three"]
    assert list(load_documents(path, doc_separator="endoftext")) == ["one\ntwo\n\nthree"]


def test_directory_of_shards_reads_in_name_order(tmp_path, stories):
    write_jsonl(tmp_path / "b.jsonl", stories[100:])
    write_parquet(tmp_path / "a.parquet", stories[:100])
    (tmp_path / "notes.csv").write_text("ignored")
    assert list(load_documents(tmp_path)) == stories


def test_text_files_for_the_tokenizer_trainer(tmp_path, stories):
    with dataset_text_files("tinystories-sample") as files:
        assert files == [asset_path("tinystories/tinystories_train.txt.gz")]  # used in place
    with dataset_text_files(write_parquet(tmp_path / "d.parquet", stories)) as files:
        assert list(load_documents(files[0])) == stories
    assert not files[0].exists()


def test_custom_text_field(tmp_path, stories):
    path = write_jsonl(tmp_path / "d.jsonl", stories[:5], field="story")
    assert list(load_documents(path, text_field="story")) == stories[:5]


def test_jsonl_with_val_fraction_split_by_document(tok_dir, tmp_path, stories):
    path = write_jsonl(tmp_path / "d.jsonl", stories)
    meta = prepare(tok_dir, path, tmp_path / "out", val_fraction=0.1)
    train_docs, val_docs = split_docs(stories, 0.1)
    assert (meta["train_documents"], meta["val_documents"]) == (216, 24)
    assert_tokens(tmp_path / "out/train.bin", tok_dir, train_docs)
    assert_tokens(tmp_path / "out/val.bin", tok_dir, val_docs)


def test_explicit_val_dataset(tok_dir, tmp_path, stories):
    train = write_jsonl(tmp_path / "train.jsonl", stories[:200])
    val = write_text(tmp_path / "val.txt", EOT.join(stories[200:]))
    meta = prepare(tok_dir, train, tmp_path / "out", val_dataset=val)
    assert (meta["train_documents"], meta["val_documents"]) == (200, 40)
    assert_tokens(tmp_path / "out/val.bin", tok_dir, stories[200:])


@pytest.mark.parametrize("builder", ["parquet", "json"])
def test_full_tinystories_loader_on_local_files(tok_dir, tmp_path, stories, monkeypatch, builder):
    """`tinystories` goes through datasets.load_dataset; here the same entry reads local files."""
    entry = DATASETS["tinystories"]
    assert entry.train.path == entry.val.path == "roneneldan/TinyStories"
    assert (entry.train.split, entry.val.split) == ("train", "validation")
    if builder == "parquet":
        files = {"train": str(write_parquet(tmp_path / "train.parquet", stories[:200])),
                 "validation": str(write_parquet(tmp_path / "val.parquet", stories[200:]))}
    else:
        files = {"train": str(write_jsonl(tmp_path / "train.jsonl", stories[:200])),
                 "validation": str(write_jsonl(tmp_path / "val.jsonl", stories[200:]))}
    local = {"path": builder, "data_files": files, "cache_dir": str(tmp_path / "hf-cache")}
    monkeypatch.setitem(DATASETS, "tinystories", dataclasses.replace(
        entry, train=dataclasses.replace(entry.train, **local), val=dataclasses.replace(entry.val, **local)))

    meta = prepare(tok_dir, "tinystories", tmp_path / "out")
    assert (meta["train_documents"], meta["val_documents"]) == (200, 40)
    assert_tokens(tmp_path / "out/train.bin", tok_dir, stories[:200])
    assert_tokens(tmp_path / "out/val.bin", tok_dir, stories[200:])
    assert prepare(tok_dir, "tinystories", tmp_path / "out") == meta  # fingerprint stable: up to date


# --- dtypes ---------------------------------------------------------------------------------------


def word_level_tokenizer(directory: Path, vocab: dict[str, int]) -> Path:
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture(scope="module")
def big_vocab_dir(tmp_path_factory) -> Path:
    vocab = {f"w{i}": i for i in range(70_000)}
    vocab.update({"[UNK]": 70_000, EOT: 70_001})
    return word_level_tokenizer(tmp_path_factory.mktemp("bigtok"), vocab)


def test_uint32_when_the_vocabulary_does_not_fit_uint16(big_vocab_dir, tmp_path):
    docs = ["w1 w69999 w65536", "w70 w3"]
    path = write_text(tmp_path / "d.txt", "\n\n".join(docs))
    meta = prepare(big_vocab_dir, path, tmp_path / "out", val_dataset=path)
    token_file = TokenFile(tmp_path / "out/train.bin")
    assert meta["dtype"] == "uint32" and token_file.dtype == np.uint32
    np.testing.assert_array_equal(token_file.tokens, [1, 69999, 65536, 70001, 70, 3, 70001])


def test_ids_that_do_not_fit_the_dtype_are_an_error(big_vocab_dir, tmp_path):
    path = write_text(tmp_path / "d.txt", "w1 w69999\n\nw2")
    with pytest.raises(MiniLlamaError, match="does not fit uint16"):
        prepare(big_vocab_dir, path, tmp_path / "out", val_dataset=path, dtype="uint16")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


# --- idempotence, mismatches, atomicity -----------------------------------------------------------


def test_second_run_does_nothing_and_changed_data_runs_again(tok_dir, tmp_path, stories, caplog):
    path = write_jsonl(tmp_path / "d.jsonl", stories)
    out = tmp_path / "out"
    meta = prepare(tok_dir, path, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with caplog.at_level("INFO"):
        assert prepare(tok_dir, path, out) == meta
    assert "nothing to do" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    write_jsonl(path, stories[:120])
    meta = prepare(tok_dir, path, out)
    assert (meta["train_documents"], meta["val_documents"]) == (114, 6)
    (out / "val.bin").write_bytes(b"damaged")  # files that no longer match meta.json are rebuilt
    assert prepare(tok_dir, path, out) == meta
    assert len(TokenFile(out / "val.bin")) == meta["val_tokens"]


def test_other_tokenizer_is_refused_unless_forced(tok_dir, tmp_path, stories):
    path = write_jsonl(tmp_path / "d.jsonl", stories)
    prepare(tok_dir, path, tmp_path / "out")
    other = train_bpe(tmp_path / "other", stories, vocab_size=300)
    with pytest.raises(MiniLlamaError, match="another tokenizer.*--force"):
        prepare(other, path, tmp_path / "out")
    meta = prepare(other, path, tmp_path / "out", force=True)
    assert meta["tokenizer_hash"] == tokenizer_fingerprint(other)
    assert_tokens(tmp_path / "out/val.bin", other, split_docs(stories)[1])


def test_failure_mid_write_leaves_the_previous_files(tok_dir, tmp_path, stories, monkeypatch):
    out = tmp_path / "out"
    good = write_jsonl(tmp_path / "good.jsonl", stories)
    meta = prepare(tok_dir, good, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    bad = write_jsonl(tmp_path / "bad.jsonl", stories)
    with open(bad, "a") as f:
        f.write("{not json\n")
    monkeypatch.setattr(prepare_module, "CHUNK_CHARS", 5_000)  # chunks were written before the error
    with pytest.raises(MiniLlamaError, match=r"bad.jsonl:241: not valid JSON"):
        prepare(tok_dir, bad, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporaries either
    assert prepare(tok_dir, good, out) == meta


def test_crash_between_renames_is_repaired_by_the_next_run(tok_dir, tmp_path, stories, monkeypatch):
    out = tmp_path / "out"
    path = write_jsonl(tmp_path / "d.jsonl", stories)
    prepare(tok_dir, path, out)
    write_jsonl(path, stories[:100])
    real_commit = TokenFileWriter.commit

    def crash_on_val(self):
        if self.path.name == "val.bin":
            raise KeyboardInterrupt  # stands in for a power cut after train.bin was renamed
        real_commit(self)

    monkeypatch.setattr(TokenFileWriter, "commit", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare(tok_dir, path, out)
    assert not (out / "meta.json").exists()  # the directory reads as incomplete, not as stale
    monkeypatch.setattr(TokenFileWriter, "commit", real_commit)
    meta = prepare(tok_dir, path, out)
    assert meta["train_documents"] + meta["val_documents"] == 100
    assert_tokens(out / "val.bin", tok_dir, split_docs(stories[:100])[1])


def test_temporaries_of_killed_runs_are_removed(tok_dir, tmp_path, stories):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".train.bin.tmp-999999999").write_bytes(b"left by a killed run")
    prepare(tok_dir, write_jsonl(tmp_path / "d.jsonl", stories), out)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


# --- bad input ------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(tok_dir, tmp_path, stories):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="no dataset named .*registered datasets: tinystories-sample"):
        prepare(tok_dir, tmp_path / "missing.txt", out)
    with pytest.raises(MiniLlamaError, match="has no documents"):
        prepare(tok_dir, write_text(tmp_path / "empty.txt", "\n\n  \n"), out)
    with pytest.raises(MiniLlamaError, match="unknown format"):
        prepare(tok_dir, write_text(tmp_path / "data.csv", "a,b"), out)
    with pytest.raises(MiniLlamaError, match=r"no string field 'text' \(has: story, id\)"):
        prepare(tok_dir, write_jsonl(tmp_path / "s.jsonl", stories, field="story"), out)
    with pytest.raises(MiniLlamaError, match="no column 'text'"):
        prepare(tok_dir, write_parquet(tmp_path / "s.parquet", stories, field="story"), out)
    with pytest.raises(MiniLlamaError, match="not UTF-8"):
        prepare(tok_dir, write_bytes(tmp_path / "latin1.txt", "caf\xe9".encode("latin-1")), out)
    with pytest.raises(MiniLlamaError, match="validation split is empty"):
        prepare(tok_dir, write_jsonl(tmp_path / "few.jsonl", stories[:5]), out)
    with pytest.raises(ValueError, match="val_fraction"):
        prepare(tok_dir, write_jsonl(tmp_path / "d.jsonl", stories), out, val_fraction=1.5)
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory"):
        prepare(tmp_path, "tinystories-sample", out)
    no_eos = word_level_tokenizer(tmp_path / "noeos", {"[UNK]": 0, "a": 1})
    with pytest.raises(MiniLlamaError, match="no <\\|endoftext\\|> token"):
        prepare(no_eos, "tinystories-sample", out)
    assert not out.exists() or sorted(out.iterdir()) == []


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- command line ---------------------------------------------------------------------------------


def test_cli_prepare(tok_dir, tmp_path, stories, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", stories)
    args = ["prepare", "--tokenizer", str(tok_dir), "--dataset", str(path), "--out", str(tmp_path / "out"),
            "--val-fraction", "0.1", "--workers", "1", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "train: 216 documents" in printed and "val: 24 documents" in printed
    assert json.loads((tmp_path / "out/meta.json").read_text())["val_documents"] == 24

    other = train_bpe(tmp_path / "other", stories, vocab_size=300)
    assert main([*args[:2], str(other), *args[3:]]) == 2
    assert "error:" in (err := capsys.readouterr().err) and "--force" in err
    assert main([*args[:2], str(other), *args[3:], "--force"]) == 0


# --- shipped data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["tinystories", "sft", "sentiment"])
def test_shipped_files_match_the_sums_in_their_readme(folder):
    import hashlib
    import re

    readme = asset_path(f"{folder}/README.md").read_text(encoding="utf-8")
    sums = re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, flags=re.M)
    assert sums, "the README lists no sha256 sums"
    for digest, name in sums:
        assert hashlib.sha256(asset_path(f"{folder}/{name}").read_bytes()).hexdigest() == digest, name
    if folder == "tinystories":
        licence = asset_path("tinystories/LICENSE").read_text(encoding="utf-8")
        assert licence.startswith("Community Data License Agreement - Sharing - Version 1.0")
