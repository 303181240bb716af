"""GGUF export, checked by llama.cpp itself (llama-cpp-python): its tokenization, greedy
continuations and logits equal minillama's on f32 files; q8_0 / q4_0 files load and their
perplexity, computed from llama.cpp's logits, stays near the float model's."""

import gzip
import itertools
import os

import numpy as np
import pytest
import torch
from helpers import random_model

from minillama.assets import asset_path
from minillama.cli import main

# `make test` (CI) installs gguf and llama-cpp-python (the dev extra) and sets MINILLAMA_REQUIRE_LLAMA_CPP:
# there these tests must run, never skip.
REQUIRED = bool(os.environ.get("MINILLAMA_REQUIRE_LLAMA_CPP"))
gguf = pytest.importorskip("gguf") if not REQUIRED else __import__("gguf")
try:
    import llama_cpp
except ImportError:
    if REQUIRED:
        raise
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed")

PROMPTS = ["Once upon a time, there was a little", "Tom and Lily went to the park. They saw a big",
           "<|im_start|>user\nTell me a story about a cat.<|im_end|>\n<|im_start|>assistant\n"]
# (name, ModelConfig fields): what llama.cpp must carry: GQA, tied / untied head, rope_theta, RMSNorm
# eps, Qwen2 biases (arch qwen2, NEOX RoPE), an explicit head_dim, linear and llama3 RoPE scaling.
SHAPE = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1)
VARIANTS = {
    "llama-gqa-tied": {},
    "llama-untied-theta": dict(tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-6,
                               num_key_value_heads=1),
    "qwen2-bias": dict(attention_bias=True, tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "llama-head-dim-linear": dict(head_dim=32, num_key_value_heads=4,
                                  rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama-llama3-rope": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
}


@pytest.fixture(scope="module")
def model_dirs(small_corpus, tmp_path_factory, single_thread):
    """{variant: a model directory with its tokenizer}: random models, weights large enough
    (initializer_range 0.1, perturbed norms / biases) for peaked, unambiguous greedy choices."""
    from minillama.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(small_corpus[0])
    root = tmp_path_factory.mktemp("gguf_models")
    dirs = {}
    for seed, (name, overrides) in enumerate(VARIANTS.items()):
        model = random_model({**SHAPE, **overrides}, seed=seed, perturb=0.1, vocab_size=tokenizer.vocab_size,
                             eos_token_id=tokenizer.eos_token_id)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


@pytest.fixture(scope="module")
def gguf_files(model_dirs, tmp_path_factory):
    """(variant, dtype) -> the exported .gguf file, made on first use through the CLI."""
    root = tmp_path_factory.mktemp("gguf_files")
    files = {}

    def get(name: str, dtype: str):
        if (name, dtype) not in files:
            out = root / f"{name}-{dtype}.gguf"
            assert main(["export", "--format", "gguf", "--dtype", dtype, "--checkpoint", str(model_dirs[name]),
                         "--out", str(out)]) == 0
            files[name, dtype] = out
        return files[name, dtype]

    return get


def _load_llama(path, **kwargs):
    """llama.cpp on one thread, keeping every position's logits; its KV cache in float32 (its
    default, float16, would round keys and values: that is not what these tests measure)."""
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, n_threads=1, n_threads_batch=1,
                           logits_all=True, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                           verbose=False, **kwargs)


def _llama_cpp_logits(llm, ids: list[int]) -> np.ndarray:
    """(len(ids), vocab) logits of llama.cpp for `ids` from an empty context."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _validation_ids(tokenizer, count: int = 110) -> list[int]:
    """Stories the small corpus' tokenizer was not trained on, as `count` ids."""
    with gzip.open(asset_path("tinystories/tinystories_train.txt.gz"), "rt", encoding="utf-8") as f:
        text = "".join(itertools.islice(f, 5000, 5040))
    return tokenizer.encode(text)[:count]


def _perplexity(logits: np.ndarray, ids: list[int]) -> float:
    """exp of the mean next-token NLL of ids[1:] under logits[:-1]."""
    logits = torch.from_numpy(np.asarray(logits[:-1], dtype=np.float64))
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).exp())


# ---- the file itself (gguf's reader; no llama.cpp needed) ---------------------------------------------
def test_the_file_carries_the_config_the_tokenizer_and_the_chat_template(model_dirs, gguf_files, tokenizer):
    from minillama.model import MiniLlama

    config = MiniLlama.from_pretrained(model_dirs["llama-untied-theta"]).config
    reader = gguf.GGUFReader(gguf_files("llama-untied-theta", "f32"))

    def value(key):
        return reader.get_field(key).contents()

    assert value("general.architecture") == "llama"
    assert value("llama.context_length") == config.max_position_embeddings == 128
    assert value("llama.embedding_length") == 64 and value("llama.block_count") == 2
    assert value("llama.attention.head_count") == 4 and value("llama.attention.head_count_kv") == 1
    assert value("llama.rope.freq_base") == 500000.0
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    tokens = value("tokenizer.ggml.tokens")
    assert len(tokens) == config.vocab_size and tokens[tokenizer.eos_token_id] == "<|endoftext|>"
    assert len(value("tokenizer.ggml.merges")) == len(tokenizer.merges)
    types = value("tokenizer.ggml.token_type")
    assert types[tokenizer.token_to_id("<|im_end|>")] == gguf.TokenType.CONTROL
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert value("tokenizer.chat_template") == tokenizer.chat_template
    names = {t.name for t in reader.tensors}
    assert "output.weight" in names  # untied
    tied = {t.name for t in gguf.GGUFReader(gguf_files("llama-gqa-tied", "f32")).tensors}
    assert "output.weight" not in tied and "token_embd.weight" in tied


def test_quantized_files_hold_quantized_matrices_and_float_norms(gguf_files):
    for dtype, qtype in (("f16", gguf.GGMLQuantizationType.F16), ("q8_0", gguf.GGMLQuantizationType.Q8_0),
                         ("q4_0", gguf.GGMLQuantizationType.Q4_0)):
        tensors = {t.name: t.tensor_type for t in gguf.GGUFReader(gguf_files("qwen2-bias", dtype)).tensors}
        assert tensors["blk.0.attn_q.weight"] == tensors["token_embd.weight"] == qtype
        assert tensors["blk.0.attn_q.bias"] == tensors["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_an_earlier_gguf_file_is_replaced_and_nothing_is_left_beside_it(model_dirs, tmp_path, capsys):
    out = tmp_path / "model.gguf"
    argv = ["export", "--format", "gguf", "--checkpoint", str(model_dirs["llama-gqa-tied"]), "--out", str(out)]
    assert main(argv) == 0
    first = out.stat().st_size
    assert main([*argv, "--dtype", "q8_0"]) == 0
    assert out.stat().st_size < first / 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
    assert "exported q8_0 GGUF" in capsys.readouterr().out


# ---- llama.cpp runs the file ------------------------------------------------------------------------
@needs_llama_cpp
def test_llama_cpp_tokenizes_as_minillama(gguf_files, tokenizer):
    llm = llama_cpp.Llama(model_path=str(gguf_files("llama-gqa-tied", "f32")), vocab_only=True, verbose=False)
    texts = [*PROMPTS, "Numbers 12345, spaces   and\ttabs\n\nnew lines; caf\u00e9 \u4f60\u597d \U0001f600!",
             "<|endoftext|>It's what they'd've said."]
    for text in texts:
        ours = tokenizer.encode(text)
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ours, text
        assert llm.detokenize(ours, special=True).decode("utf-8") == text


@needs_llama_cpp
@pytest.mark.parametrize("variant", VARIANTS)
def test_llama_cpp_logits_and_greedy_continuations_equal_minillama(variant, model_dirs, gguf_files, tokenizer):
    from minillama.generate import generate
    from minillama.model import MiniLlama

    model = MiniLlama.from_pretrained(model_dirs[variant]).eval()
    llm = _load_llama(gguf_files(variant, "f32"))
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            ours = model(torch.tensor([ids])).logits[0].numpy()
        theirs = _llama_cpp_logits(llm, ids)
        assert np.abs(theirs - ours).max() < 1e-3, (variant, prompt, np.abs(theirs - ours).max())

        expected = generate(model, torch.tensor([ids]), max_new_tokens=24, temperature=0.0,
                            stop_token_ids=())[0, len(ids):].tolist()
        llm.reset()
        llm.eval(ids)
        continuation = []
        for _ in range(24):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            continuation.append(token)
            llm.eval([token])
        assert continuation == expected, (variant, prompt)


@needs_llama_cpp
def test_quantized_files_load_and_their_perplexity_stays_near_the_float_model(model_dirs, gguf_files, tokenizer):
    from minillama.model import MiniLlama

    model = MiniLlama.from_pretrained(model_dirs["llama-untied-theta"]).eval()
    ids = _validation_ids(tokenizer)
    with torch.no_grad():
        ours = _perplexity(model(torch.tensor([ids])).logits[0].numpy(), ids)
    perplexity = {dtype: _perplexity(_llama_cpp_logits(_load_llama(gguf_files("llama-untied-theta", dtype)), ids),
                                     ids) for dtype in ("f32", "f16", "q8_0", "q4_0")}
    print("perplexity: minillama", ours, "llama.cpp", perplexity)
    assert perplexity["f32"] == pytest.approx(ours, rel=1e-4)
    assert perplexity["f16"] == pytest.approx(ours, rel=2e-3)
    assert perplexity["q8_0"] == pytest.approx(ours, rel=1e-2)
    assert perplexity["q4_0"] == pytest.approx(ours, rel=0.15)


def test_a_tokenizer_llama_cpp_would_refuse_is_refused_in_one_line():
    from minillama.errors import MiniLlamaError
    from minillama.export.gguf import vocabulary
    from minillama.tokenizer import Tokenizer

    no_merges = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    with pytest.raises(MiniLlamaError, match="no merges"):
        vocabulary(no_merges, 300)


@needs_llama_cpp
def test_matrices_without_whole_32_value_blocks_fall_back_to_f16_and_still_run(tokenizer, tmp_path):
    """hidden 48: rows of 48 inputs cannot be q4_0 blocks (f16, as convert_hf_to_gguf.py does);
    down_proj's 64 inputs can."""
    from minillama.model import MiniLlama

    model = random_model({**SHAPE, "hidden_size": 48, "intermediate_size": 64}, seed=7, perturb=0.1,
                         vocab_size=tokenizer.vocab_size)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "model-q4_0.gguf"
    assert main(["export", "--format", "gguf", "--dtype", "q4_0", "--checkpoint", str(tmp_path / "model"),
                 "--out", str(out)]) == 0
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q4_0
    ids = tokenizer.encode(PROMPTS[0])
    ours = MiniLlama.from_pretrained(tmp_path / "model").eval()(torch.tensor([ids])).logits[0].detach().numpy()
    theirs = _llama_cpp_logits(_load_llama(out), ids)
    assert np.abs(theirs - ours).max() < 0.1 * np.abs(ours).max()  # measured: 0.19 of logits up to 3.2


def test_a_failure_while_writing_leaves_the_earlier_file_and_no_temporary(model_dirs, tmp_path, monkeypatch):
    out = tmp_path / "model.gguf"
    argv = ["export", "--format", "gguf", "--checkpoint", str(model_dirs["llama-gqa-tied"]), "--out", str(out)]
    assert main(argv) == 0
    before = out.read_bytes()

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    assert main([*argv, "--dtype", "q4_0"]) == 1
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
