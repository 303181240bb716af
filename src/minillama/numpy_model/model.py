"""The LLaMA / Qwen2 decoder in NumPy, for inference: the arithmetic of `minillama.model.llama`,
in float32, with no torch.

    embedding -> [RMSNorm -> attention (RoPE, GQA, KV cache) -> + -> RMSNorm -> SwiGLU -> +] x L
    -> final RMSNorm -> LM head

Shapes as in the torch model: B batch, T new tokens, S keys attended to (cache + new), H query
heads, K key/value heads, G = H / K query heads per key/value head, D head_dim, C hidden_size,
I intermediate_size, V vocab_size. docs/numpy.md walks through it beside the torch code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from minillama.errors import CheckpointError
from minillama.model.config import load_config
from minillama.model.rope import rope_inverse_frequencies
from minillama.numpy_model.sampling import check_sampling, sample_next_token
from minillama.numpy_model.weights import read_state


# ---- RMSNorm -----------------------------------------------------------------------------------
def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, in float32 (the torch model upcasts to float32 too)."""
    return weight * (x * (1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)))


# ---- Rotary position embeddings (frequencies: `minillama.model.rope`, shared with torch) ---------
class RotaryTables:
    """cos/sin of position x frequency, (T, D/2) each: the torch model's (T, D) tables are the
    same half twice (the `rotate_half` layout pairs x_i with x_{i + D/2}), so half is enough.

    Rows are computed once for `max_position_embeddings` positions (more on demand); dynamic
    scaling recomputes the frequencies for a call whose last position is past that, as torch does.
    """

    def __init__(self, config: Any):
        self.config = config
        self.dynamic = (config.rope_scaling or {}).get("rope_type") == "dynamic"
        self.inv_freq, self.scale = rope_inverse_frequencies(config)
        self.cos, self.sin = self._tables(np.arange(config.max_position_embeddings), self.inv_freq)

    def _tables(self, positions: np.ndarray, inv_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        angles = positions.astype(np.float32)[:, None] * inv_freq  # (T, D/2), float32 as in torch
        cos, sin = np.cos(angles), np.sin(angles)
        if self.scale != 1.0:  # YaRN's attention factor
            cos, sin = cos * np.float32(self.scale), sin * np.float32(self.scale)
        return cos, sin

    def __call__(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Tables for positions start .. start + length - 1."""
        end = start + length
        if self.dynamic and end > self.config.max_position_embeddings:
            inv_freq = rope_inverse_frequencies(self.config, end)[0]
            return self._tables(np.arange(start, end), inv_freq)
        if end > len(self.cos):  # past the context: extend (RoPE itself has no length limit)
            self.cos, self.sin = self._tables(np.arange(max(end, 2 * len(self.cos))), self.inv_freq)
        return self.cos[start:end], self.sin[start:end]


def apply_rotary(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate each (x_i, x_{i+D/2}) pair by its position's angle: torch's
    x * cos + rotate_half(x) * sin, written per half. x: (B, heads, T, D); cos, sin: (T, D/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    out = np.empty(x.shape, dtype=np.float32)
    np.multiply(x1, cos, out=out[..., :half])
    out[..., :half] -= x2 * sin  # x1 cos - x2 sin
    np.multiply(x2, cos, out=out[..., half:])
    out[..., half:] += x1 * sin  # x2 cos + x1 sin
    return out


# ---- KV cache ----------------------------------------------------------------------------------
class NumpyKVCache:
    """Preallocated keys and values of every layer, (layers, B, K, max_seq_len, D): decoding
    writes into it and reads views of it, and never reallocates."""

    def __init__(self, config: Any, batch_size: int, max_seq_len: int):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_seq_len,
                 config.head_dim)
        self.keys = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.max_seq_len = max_seq_len
        self.length = 0  # slots filled

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store k, v (B, K, T, D) after the filled slots; return views of all filled (B, K, S, D)."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reset(self) -> None:
        self.length = 0


# ---- The model ---------------------------------------------------------------------------------
@dataclass
class _Layer:
    """One decoder block's weights, laid out for `x @ w`: (in, out), contiguous."""

    index: int
    input_norm: np.ndarray  # (C,)
    qkv: np.ndarray  # (C, (H + 2K) D): q_proj, k_proj, v_proj side by side, one matmul
    qkv_bias: np.ndarray | None  # ((H + 2K) D,), Qwen2 only
    o: np.ndarray  # (H D, C)
    post_norm: np.ndarray  # (C,)
    gate_up: np.ndarray  # (C, 2I): gate_proj and up_proj side by side
    down: np.ndarray  # (I, C)


def _transposed(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weight.T, dtype=np.float32)


class NumpyLlama:
    """The causal LM in NumPy. Build it from a state dict with transformers' parameter names
    (`NumpyLlama(config, weights)`) or from a checkpoint directory (`from_pretrained`)."""

    def __init__(self, config: Any, weights: dict[str, np.ndarray]):
        if config.norm_placement != "pre":
            raise CheckpointError(f"the NumPy engine runs pre-norm (LLaMA) blocks; this model has norm_placement "
                                  f"{config.norm_placement!r}: run it with the PyTorch model instead")
        self.config = config
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        # Own copies: arrays from a live torch state dict would otherwise share its memory.
        weights = {key: np.array(value, dtype=np.float32) for key, value in weights.items()}
        _check_weights(config, weights)
        self.embed = np.ascontiguousarray(weights["model.embed_tokens.weight"])  # (V, C)
        self.layers = [self._layer(weights, i) for i in range(config.num_hidden_layers)]
        self.norm = weights["model.norm.weight"]
        head = self.embed if config.tie_word_embeddings else weights["lm_head.weight"]
        self.head = _transposed(head)  # (C, V)
        self.rope = RotaryTables(config)

    def _layer(self, weights: dict[str, np.ndarray], i: int) -> _Layer:
        prefix = f"model.layers.{i}."
        attn, mlp = prefix + "self_attn.", prefix + "mlp."
        qkv = np.concatenate([weights[f"{attn}{name}_proj.weight"] for name in "qkv"])  # ((H + 2K) D, C)
        bias = None
        if self.config.attention_bias:
            bias = np.concatenate([weights[f"{attn}{name}_proj.bias"] for name in "qkv"])
        gate_up = np.concatenate([weights[mlp + "gate_proj.weight"], weights[mlp + "up_proj.weight"]])
        return _Layer(i, weights[prefix + "input_layernorm.weight"], _transposed(qkv), bias,
                      _transposed(weights[attn + "o_proj.weight"]),
                      weights[prefix + "post_attention_layernorm.weight"], _transposed(gate_up),
                      _transposed(weights[mlp + "down_proj.weight"]))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> NumpyLlama:
        """Load a directory written by `MiniLlama.save_pretrained`, `save_hf` or transformers
        (config.json + model.safetensors, or sharded); checksums are verified when present."""
        from minillama.model.layout import quantization_config

        if quantization_config(directory) is not None:
            raise CheckpointError(f"{directory} is a quantized model (minillama quantize); the NumPy engine reads "
                                  "float weights: use --engine torch, or its float checkpoint")
        config = load_config(directory)
        return cls(config, read_state(directory))

    def new_cache(self, batch_size: int = 1, max_seq_len: int | None = None) -> NumpyKVCache:
        return NumpyKVCache(self.config, batch_size, max_seq_len or self.config.max_position_embeddings)

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, ids: Any, cache: NumpyKVCache | None = None, logits_to_keep: int = 0) -> np.ndarray:
        """Logits (B, T, V) float32 for token ids (B, T); ids (T,) give logits (T, V).

        With a cache, the ids continue the sequence it holds (their keys and values are appended);
        logits_to_keep=n sends only the last n positions through the head (1 for generation).
        """
        ids = np.asarray(ids)
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be integers of shape (T,) or (B, T) with T >= 1, got {ids.dtype} "
                             f"{ids.shape}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:  # numpy would wrap negative ids silently
            raise ValueError(f"token ids must lie in [0, vocab_size={self.config.vocab_size}), "
                             f"got {int(ids.min())}..{int(ids.max())}")
        B, T = ids.shape
        past = 0 if cache is None else cache.length
        if cache is not None and (past + T > cache.max_seq_len or B != cache.batch_size):
            raise ValueError(f"the KV cache holds {cache.batch_size} x {cache.max_seq_len} tokens; "
                             f"{B} x ({past} + {T}) do not fit, allocate a larger cache")
        cos, sin = self.rope(past, T)
        mask = None
        if T > 1:  # query t (at position past + t) sees keys 0 .. past + t
            allowed = np.arange(past + T) <= np.arange(past, past + T)[:, None]  # (T, S)
            mask = np.where(allowed, np.float32(0), np.float32(-np.inf))
        eps = self.config.rms_norm_eps
        x = self.embed[ids]  # (B, T, C), a fresh array we may update in place
        with np.errstate(over="ignore"):  # silu's exp(-g) overflows to inf for very negative g: fine
            for layer in self.layers:
                x += self._attention(layer, rms_norm(x, layer.input_norm, eps), cos, sin, mask, cache)
                x += self._mlp(layer, rms_norm(x, layer.post_norm, eps))
        if cache is not None:
            cache.length += T
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = rms_norm(x, self.norm, eps) @ self.head  # (B, T, V)
        return logits[0] if single else logits

    __call__ = forward

    def _attention(self, layer: _Layer, x: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                   mask: np.ndarray | None, cache: NumpyKVCache | None) -> np.ndarray:
        """softmax(Q K^T / sqrt(D) + mask) V with rotary Q, K and grouped K, V heads. x: (B, T, C)."""
        B, T, _ = x.shape
        H, K, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = x @ layer.qkv  # (B, T, (H + 2K) D)
        if layer.qkv_bias is not None:
            qkv += layer.qkv_bias
        q = qkv[..., :H * D].reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
        k = qkv[..., H * D:(H + K) * D].reshape(B, T, K, D).transpose(0, 2, 1, 3)  # (B, K, T, D)
        v = qkv[..., (H + K) * D:].reshape(B, T, K, D).transpose(0, 2, 1, 3)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer.index, k, v)  # (B, K, S, D): everything seen so far
        q = q.reshape(B, K, H // K, T, D)  # group the query heads that share a key/value head
        scores = q @ k[:, :, None].swapaxes(-1, -2)  # (B, K, G, T, S)
        scores *= np.float32(1 / math.sqrt(D))
        if mask is not None:
            scores += mask
        scores -= scores.max(axis=-1, keepdims=True)  # softmax, stable: exp of values <= 0
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        y = scores @ v[:, :, None]  # (B, K, G, T, D)
        y = y.reshape(B, H, T, D).transpose(0, 2, 1, 3).reshape(B, T, H * D)
        return y @ layer.o

    @staticmethod
    def _mlp(layer: _Layer, x: np.ndarray) -> np.ndarray:
        """down(silu(gate(x)) * up(x)), silu(g) = g / (1 + exp(-g))."""
        gate_up = x @ layer.gate_up  # (B, T, 2I)
        half = gate_up.shape[-1] // 2
        gate, up = gate_up[..., :half], gate_up[..., half:]
        return (gate / (1 + np.exp(-gate)) * up) @ layer.down

    # ---- generation ----------------------------------------------------------------------------
    def generate_stream(self, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                        rng: np.random.Generator | None = None,
                        stop_token_ids: Any = None) -> Iterator[int]:
        """Yield new token ids one at a time: prefill the prompt, then one cached step per token.

        temperature 0 is greedy; the randomness comes from `rng`, or a Generator seeded with `seed`.
        Stops after max_new_tokens, or after yielding a token of `stop_token_ids`.
        """
        prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        if prompt.size == 0:
            raise ValueError("the prompt has no tokens; start from the BOS token")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        check_sampling(temperature, top_k, top_p)
        stops = set(np.atleast_1d(stop_token_ids).tolist()) if stop_token_ids is not None else set()
        rng = rng if rng is not None else np.random.default_rng(seed)
        if max_new_tokens == 0:
            return
        cache = self.new_cache(1, prompt.size + max_new_tokens)
        logits = self.forward(prompt[None], cache, logits_to_keep=1)[0, -1]
        step = np.empty((1, 1), dtype=np.int64)
        for n in range(max_new_tokens):
            token = sample_next_token(logits, rng, temperature, top_k, top_p)
            yield token
            if token in stops or n == max_new_tokens - 1:
                return
            step[0, 0] = token
            logits = self.forward(step, cache, logits_to_keep=1)[0, -1]

    def generate(self, prompt_ids: Any, max_new_tokens: int, **sampling: Any) -> list[int]:
        """The new token ids (see `generate_stream` for the options)."""
        return list(self.generate_stream(prompt_ids, max_new_tokens, **sampling))


def _check_weights(config: Any, weights: dict[str, np.ndarray]) -> None:
    """Strict loading: exactly the parameters the config implies, with their shapes."""
    c = config
    C, I, V, D = c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim
    H, K = c.num_attention_heads, c.num_key_value_heads
    expected = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not c.tie_word_embeddings:
        expected["lm_head.weight"] = (V, C)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        expected |= {p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                     p + "self_attn.q_proj.weight": (H * D, C), p + "self_attn.k_proj.weight": (K * D, C),
                     p + "self_attn.v_proj.weight": (K * D, C), p + "self_attn.o_proj.weight": (C, H * D),
                     p + "mlp.gate_proj.weight": (I, C), p + "mlp.up_proj.weight": (I, C),
                     p + "mlp.down_proj.weight": (C, I)}
        if c.attention_bias:
            expected |= {p + "self_attn.q_proj.bias": (H * D,), p + "self_attn.k_proj.bias": (K * D,),
                         p + "self_attn.v_proj.bias": (K * D,)}
    if c.tie_word_embeddings and "lm_head.weight" in weights:
        if not np.array_equal(weights.pop("lm_head.weight"), weights.get("model.embed_tokens.weight")):
            raise CheckpointError("tie_word_embeddings is true but lm_head.weight differs from the embedding")
    weights = {k: v for k, v in weights.items() if not k.endswith("rotary_emb.inv_freq")}
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"weights do not match the config: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{'...' if len(unexpected) > 5 else ''}")
    for key, shape in expected.items():
        if weights[key].shape != shape:
            raise CheckpointError(f"{key} has shape {weights[key].shape}, the config implies {shape}")
