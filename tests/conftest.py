"""Shared fixtures: a small tokenizer and prepared token files, built once per test session from
the shipped TinyStories sample (offline)."""

import gzip
import itertools
import os

import pytest
import torch

from minillama.assets import asset_path

# Triton compiles kernels for a GPU or, with TRITON_INTERPRET=1, runs them through NumPy on the CPU.
# It reads the variable once, when it is imported, and torch imports it early (with torch._dynamo,
# which the model imports): so it is set here, before any test module is collected. Without a CUDA
# device the interpreter is the only way the kernels run (tests/test_flash_triton.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """(tokenizer_dir, prepared_dir, text_path): a 512-token BPE and token files of ~400 stories."""
    root = tmp_path_factory.mktemp("small_corpus")
    with gzip.open(asset_path("tinystories/tinystories_train.txt.gz"), "rt", encoding="utf-8") as f:
        stories = "".join(itertools.islice(f, 3000))  # the first few hundred stories
    text = root / "stories.txt"
    text.write_text(stories[: stories.rindex("<|endoftext|>") + len("<|endoftext|>\n")], encoding="utf-8")

    from minillama.data import prepare_dataset
    from minillama.tokenizer import train_tokenizer

    train_tokenizer(text, 512, out_dir=root / "tokenizer")
    prepare_dataset(root / "tokenizer", text, root / "data", val_fraction=0.1, progress=False)
    return root / "tokenizer", root / "data", text


@pytest.fixture(scope="session")
def tokenizer(small_corpus):
    """The 512-token BPE of `small_corpus`, loaded."""
    from minillama.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(small_corpus[0])


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine each multi-threaded op
    may wait for a descheduled worker: one thread keeps these tests fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def keep_thread_count():
    """Training sets torch's global thread count (run.threads); put it back after the test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
