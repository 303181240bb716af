"""GGUF export: one file that llama.cpp (and what builds on it: Ollama, LM Studio) runs, with the
model and its tokenizer.

The file is written by `gguf`, llama.cpp's own Python writer (the one its convert_hf_to_gguf.py
uses), and the rules are that script's, so a minillama model reads in llama.cpp as a converted
transformers Llama / Qwen2 would:

- architecture `llama`, or `qwen2` for a model with q/k/v biases;
- `llama` rotates (x_i, x_{i+1}) pairs (GGML's "normal" RoPE) where transformers and minillama
  rotate (x_i, x_{i+D/2}) (NEOX): the rows of q_proj and k_proj are permuted, head by head, so
  that each head's output comes out interleaved (`rope_permute`). `qwen2` runs NEOX RoPE, so
  its weights go as they are;
- 1-D tensors (norm weights, biases) stay float32; 2-D ones take the file's dtype, and a matrix
  whose rows do not split into whole 32-value blocks falls back to f16 (as the convert script
  does). q8_0 and q4_0 cover every matrix, embedding and LM head included ("pure"; llama.cpp's
  own `llama-quantize` keeps the LM head of a Q4_0 file at Q6_K);
- the tokenizer is GPT-2-style byte-level BPE: the token strings and merges of tokenizer.json,
  each token's type (normal, control for special tokens, unused for padding rows), BOS / EOS /
  padding ids and the chat template.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from minillama.errors import MiniLlamaError, OutputError
from minillama.files import fsync_dir
from minillama.generate import special
from minillama.model.config import ModelConfig
from minillama.tokenizer.pretokenize import GPT2_PATTERN

DTYPES = ("f32", "f16", "q8_0", "q4_0")
MAGIC = b"GGUF"

# tokenizer.json pre-tokenizer regexes -> the llama.cpp pre-tokenizer that splits text the same way
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {GPT2_PATTERN: "gpt-2", QWEN2_PATTERN: "qwen2", LLAMA3_PATTERN: "llama-bpe"}


def gguf_module():
    """The `gguf` package, or a one-line error saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise MiniLlamaError("GGUF export needs the gguf package (llama.cpp's writer): "
                             "pip install 'minillama[gguf]' or pip install gguf") from None
    # its INFO lines name the temporary file and its endianness; the CLI prints what matters
    logging.getLogger("gguf").setLevel(logging.WARNING)
    return gguf


def architecture(config: ModelConfig) -> str:
    """llama.cpp's name for the model: `qwen2` when q/k/v carry biases, else `llama`."""
    return "qwen2" if config.attention_bias else "llama"


def check_exportable(config: ModelConfig) -> None:
    """Refuse (one line) what llama.cpp's llama / qwen2 graphs would compute differently."""
    if config.norm_placement != "pre":
        raise MiniLlamaError(f"a model with norm_placement {config.norm_placement!r} cannot be exported to GGUF: "
                             "llama.cpp's llama and qwen2 blocks are pre-norm")
    rope_type = (config.rope_scaling or {}).get("rope_type")
    if rope_type not in (None, "linear", "llama3"):
        raise MiniLlamaError(f"RoPE scaling {rope_type!r} is not exported to GGUF (llama.cpp computes it "
                             "differently); export the model without rope_scaling, or with linear / llama3")
    if rope_type == "llama3" and config.attention_bias:
        raise MiniLlamaError("llama3 RoPE scaling with q/k/v biases cannot be exported to GGUF: llama.cpp's qwen2 "
                             "graph reads no rope_freqs tensor")


def rope_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Rows of q_proj / k_proj (num_heads * D, ...) reordered within each head from NEOX order
    [x_0..x_{D/2-1}, x_{D/2}..x_{D-1}] to GGML's interleaved [x_0, x_{D/2}, x_1, x_{D/2+1}, ...],
    so that llama.cpp's pairwise RoPE rotates the pairs transformers' rotate_half rotates
    (convert_hf_to_gguf.py's `LlamaModel.permute`). Works for biases (1-D) too."""
    rows = weight.shape[0]
    return (weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def llama3_rope_factors(config: ModelConfig) -> np.ndarray:
    """The `rope_freqs` tensor of a llama3-scaled model: by how much llama.cpp divides each
    frequency (D/2 values), as convert_hf_to_gguf.py computes them."""
    import math

    scaling = config.rope_scaling
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    dim = config.head_dim
    freqs = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def gguf_tensors(config: ModelConfig, state: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight of a `MiniLlama` state dict, in file order.
    A tied LM head is not written: llama.cpp reuses token_embd when output.weight is absent."""
    gguf = gguf_module()
    names, T = gguf.TENSOR_NAMES, gguf.MODEL_TENSOR
    permute = architecture(config) == "llama"

    def array(key: str) -> np.ndarray:
        return state[key].detach().float().cpu().numpy()

    yield names[T.TOKEN_EMBD] + ".weight", array("model.embed_tokens.weight")
    if (config.rope_scaling or {}).get("rope_type") == "llama3":
        yield names[T.ROPE_FREQS] + ".weight", llama3_rope_factors(config)
    ours = {"input_layernorm": T.ATTN_NORM, "self_attn.q_proj": T.ATTN_Q, "self_attn.k_proj": T.ATTN_K,
            "self_attn.v_proj": T.ATTN_V, "self_attn.o_proj": T.ATTN_OUT, "post_attention_layernorm": T.FFN_NORM,
            "mlp.gate_proj": T.FFN_GATE, "mlp.up_proj": T.FFN_UP, "mlp.down_proj": T.FFN_DOWN}
    heads = {"self_attn.q_proj": config.num_attention_heads, "self_attn.k_proj": config.num_key_value_heads}
    for i in range(config.num_hidden_layers):
        for module, tensor in ours.items():
            for kind in ("weight", "bias"):
                key = f"model.layers.{i}.{module}.{kind}"
                if key not in state:
                    continue
                value = array(key)
                if permute and module in heads:
                    value = rope_permute(value, heads[module])
                yield names[tensor].format(bid=i) + "." + kind, value
    yield names[T.OUTPUT_NORM] + ".weight", array("model.norm.weight")
    if not config.tie_word_embeddings:
        yield names[T.OUTPUT] + ".weight", array("lm_head.weight")


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str], str]:
    """(tokens, token types, merges, pre-tokenizer name) of a byte-level BPE tokenizer for a model
    of `vocab_size` rows; ids the tokenizer lacks (a padded embedding) become unused "[PADn]"."""
    gguf = gguf_module()
    data = tokenizer.to_hf_dict()
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        pattern = GPT2_PATTERN
    else:
        splits = [p for p in pre.get("pretokenizers", []) if p.get("type") == "Split"]
        pattern = splits[0]["pattern"].get("Regex") if splits else None
    if pattern not in PRE_TOKENIZERS:
        raise MiniLlamaError(f"the tokenizer splits text with the pattern {pattern!r}, for which llama.cpp has "
                             "no pre-tokenizer; GGUF export supports GPT-2, Qwen2 and Llama 3 style BPE")
    if not data["model"]["merges"]:
        raise MiniLlamaError("the tokenizer has no merges, and llama.cpp refuses a BPE vocabulary without them; "
                             "export with a trained tokenizer")
    types = gguf.TokenType
    by_id: dict[int, tuple[str, int]] = {i: (token, types.NORMAL) for token, i in data["model"]["vocab"].items()}
    for added in data["added_tokens"]:
        by_id[added["id"]] = (added["content"], types.CONTROL if added["special"] else types.USER_DEFINED)
    if max(by_id) >= vocab_size:
        raise MiniLlamaError(f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} rows; "
                             "use the tokenizer the model was trained with")
    tokens, token_types = [], []
    for i in range(vocab_size):
        token, kind = by_id.get(i, (f"[PAD{i}]", types.UNUSED))
        tokens.append(token)
        token_types.append(int(kind))
    return tokens, token_types, list(data["model"]["merges"]), PRE_TOKENIZERS[pattern]


def check_gguf_output(out: Path, overwrite: bool, inputs: tuple[str | os.PathLike | None, ...]) -> None:
    """`--out` may be new, or a GGUF file (an earlier export); anything else only with `overwrite`,
    and never a directory or an input of the command."""
    resolved = out.resolve()
    for given in inputs:
        if given is not None:
            given = Path(given).resolve()
            if given == resolved or given in resolved.parents:
                raise OutputError(f"{out} is inside {given}, an input of this command (a checksummed directory); "
                                  "write the GGUF file elsewhere")
    if out.is_dir():
        raise OutputError(f"{out} is a directory; --out names the .gguf file to write (e.g. {out}/model.gguf)")
    if not out.exists() or overwrite:
        return
    with open(out, "rb") as f:
        if f.read(4) == MAGIC:
            return
    raise OutputError(f"{out} exists and is not a GGUF file; choose another path",
                      remedy=("overwrite", None, "replace it"))


def save_gguf(model: Any, out: str | os.PathLike, tokenizer: Any, dtype: str = "f32", *,
              overwrite: bool = False, inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Write `model` (a `MiniLlama`) and `tokenizer` (ours) to the GGUF file `out`, its matrices in
    `dtype` (one of `DTYPES`). The file appears complete or not at all: it is written beside
    `out` and renamed over it. `out` may be new or an earlier GGUF file (`check_gguf_output`)."""
    if dtype not in DTYPES:
        raise MiniLlamaError(f"GGUF dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    gguf = gguf_module()
    config = model.config
    check_exportable(config)
    out = Path(out)
    check_gguf_output(out, overwrite, inputs)
    tokens, token_types, merges, pre = vocabulary(tokenizer, config.vocab_size)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[dtype]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, architecture(config))
    try:
        writer.add_name(out.stem)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(config.vocab_size)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        if (config.rope_scaling or {}).get("rope_type") == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(config.rope_scaling["factor"])

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_merges(merges)
        stops = special.stop_token_ids(config, tokenizer)
        start = special.start_token_id(config, tokenizer)
        if start is not None:
            writer.add_bos_token_id(start)
        if stops:
            writer.add_eos_token_id(stops[0])
        writer.add_pad_token_id(special.pad_token_id(config, stops))
        end_of_turn = tokenizer.token_to_id(special.END_OF_TURN)
        if end_of_turn is not None:
            writer.add_eot_token_id(end_of_turn)
        writer.add_add_bos_token(False)  # minillama never prepends a start token to a prompt
        writer.add_add_eos_token(False)
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)

        for name, array in gguf_tensors(config, model.state_dict()):
            kind = qtype if array.ndim == 2 else gguf.GGMLQuantizationType.F32
            try:
                data = gguf.quants.quantize(array, kind)
            except gguf.QuantError:  # rows not a whole number of 32-value blocks
                kind = gguf.GGMLQuantizationType.F16
                data = gguf.quants.quantize(array, kind)
            writer.add_tensor(name, data, raw_dtype=kind)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.flush()
        for f in writer.fout or ():
            os.fsync(f.fileno())
        writer.close()
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
