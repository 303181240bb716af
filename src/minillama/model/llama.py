"""A LLaMA / Qwen2 decoder in plain PyTorch, top to bottom like the architecture diagram:

    RMSNorm -> rotary embeddings -> attention (GQA, SDPA or eager, KV cache) -> SwiGLU MLP
    -> pre-norm block -> stack + final norm (`LlamaModel`) -> LM head and loss (`MiniLlama`).

Parameter names are those of `transformers.LlamaForCausalLM`, so its state dict is ours. Beside
this file: RoPE's scaling variants (`rope.py`), the KV cache (`cache.py`), the attention mask and
positions for padding and caches (`masks.py`), the losses (`loss.py`) and reading / writing model
directories (`io.py`).
Shapes: B batch, T new tokens, S keys attended to (cache + new), H query heads, K key/value
heads, D head_dim, C hidden_size, V vocab_size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minillama.model import flash, flash_triton, io
from minillama.model.cache import KVCache
from minillama.model.config import ModelConfig, load_config
from minillama.model.layout import quantization_config
from minillama.model.loss import Workspace, causal_lm_loss, linear_cross_entropy
from minillama.model.masks import prepare_attention
from minillama.model.rope import rope_inverse_frequencies


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring or bias, cheaper and as good.

    Computed in float32 and cast back before the weight, as transformers does, so bf16 runs match.
    """

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


# ---- Rotary position embeddings ------------------------------------------------------------------
class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions, in the `rotate_half` layout (pairs are (i, i + D/2))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.dynamic = (config.rope_scaling or {}).get("rope_type") == "dynamic"
        self.reset_inv_freq()

    def reset_inv_freq(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the frequencies (`rope.py`), e.g. after building the model on the meta device."""
        inv_freq, self.scale = rope_inverse_frequencies(self.config, xp=torch)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) positions -> cos, sin of shape (B, T, D), computed in float32."""
        inv_freq = self.inv_freq
        if self.dynamic:
            longest = int(position_ids.max()) + 1
            if longest > self.config.max_position_embeddings:
                inv_freq = rope_inverse_frequencies(self.config, longest, xp=torch)[0].to(inv_freq.device)
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return (angles.cos() * self.scale).to(dtype), (angles.sin() * self.scale).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+D/2}) pair by its position's angle. x: (B, heads, T, D), cos/sin: (B, T, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


# ---- Attention -------------------------------------------------------------------------------
def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """The textbook softmax(QK^T / sqrt(D) + mask) V, with grouped heads sharing keys, not copying them.

    q: (B, H, T, D); k, v: (B, K, S, D); mask: bool (B, 1, T, S), True = may attend. -> (B, H, T, D)
    """
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    # The G query heads that share a key/value head go along the query axis: (B, K, G*T, D) @ (B, K, D, S)
    # is one batched matmul per key head. Broadcasting k to (B, K, G, D, S) instead makes matmul copy
    # the keys G times, which dominates a one-token decoding step (measured: `minillama lab attention-kv-heads`).
    scores = q.reshape(B, K, G * T, D) @ k.transpose(-1, -2) / math.sqrt(D)  # (B, K, G*T, S)
    scores = scores.view(B, K, G, T, S)
    if causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]  # (1, 1, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask.unsqueeze(2), float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, K, G, T, S)
    return (weights.view(B, K, G * T, S) @ v).view(B, H, T, D)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """The same through torch's fused kernel (flash attention where it applies), same shapes."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # On CPU the flash kernel's backward is slower in bf16 than in float32 (55 vs 32 ms a layer
        # for the tiny preset, torch 2.13), so under autocast attention runs in float32.
        with torch.autocast("cpu", enabled=False):
            return sdpa_attention(q.float(), k.float(), v.float(), mask, causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          enable_gqa=k.shape[1] != q.shape[1])


ATTENTION = {"eager": eager_attention, "sdpa": sdpa_attention, "flash_tiled": flash.flash_attention,
             "flash_triton": flash_triton.flash_attention}


class Attention(nn.Module):
    """Multi-head attention with rotary positions and grouped key/value heads (GQA)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.implementation = config.attn_implementation
        C, H, K, D = config.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = nn.Linear(C, H * D, bias=config.attention_bias)
        self.k_proj = nn.Linear(C, K * D, bias=config.attention_bias)
        self.v_proj = nn.Linear(C, K * D, bias=config.attention_bias)
        self.o_proj = nn.Linear(H * D, C, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None, cache_position: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C); mask: bool (B, 1, T, S) or None for plain causal; cache_position (T,): the
        cache slots to write, for the cache's fixed-size view (see `KVCache`). -> (B, T, C)"""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, cache_position)  # (B, K, S, D): all keys to attend to
        # No mask and several queries means a fresh sequence: plain causal (the fast kernel path).
        causal = mask is None and T > 1
        # One query per row (decoding): SDPA's flash kernel has nothing to tile and costs more to set
        # up than the textbook form's two small matmuls.
        attention = eager_attention if self.implementation == "sdpa" and T == 1 else ATTENTION[self.implementation]
        y = attention(q, k, v, mask, causal)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


# ---- Feed-forward, block, stack ------------------------------------------------------------
class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): a gated MLP, better than GELU at the same parameter count."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """A residual block; `config.norm_placement` says where its norms sit:
    pre (LLaMA):  x + attn(norm1(x)),          then x + mlp(norm2(x))
    post (the original Transformer): norm1(x + attn(x)), then norm2(x + mlp(x))
    sandwich:     x + norm1'(attn(norm1(x))),  then x + norm2'(mlp(norm2(x)))
    Pre-norm keeps an identity path from the embedding to the last layer, so gradients reach the
    first layers undiminished; post-norm normalises the residual stream itself (see docs/attention.md)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.placement = config.norm_placement
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)
        if self.placement == "sandwich":  # a norm on each sublayer's output too
            self.attn_output_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.mlp_output_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache, cache_position=None):
        if self.placement == "post":
            x = self.input_layernorm(x + self.self_attn(x, cos, sin, mask, cache, cache_position))
            return self.post_attention_layernorm(x + self.mlp(x))
        attn = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_position)
        if self.placement == "sandwich":
            x = x + self.attn_output_norm(attn)
            return x + self.mlp_output_norm(self.mlp(self.post_attention_layernorm(x)))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """The trunk: token embedding, the stack of blocks and the final norm (transformers'
    `LlamaModel`), shared by the causal LM and the classifier."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, initializer_range) weights; the projections that write into the residual
        stream (o_proj, down_proj) get std / sqrt(2 * layers) so its variance does not grow with depth."""
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_residual = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, 0.0, residual_std if is_residual else std, generator=generator)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        self.rotary_emb.reset_inv_freq(self.embed_tokens.weight.device)

    def forward(self, input_ids, position_ids, mask, cache, cache_position=None):
        x = self.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                # Recompute the block in backward instead of storing its activations.
                x = checkpoint(layer, x, cos, sin, mask, cache, cache_position, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, cache_position)
        return self.norm(x)

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Matmul FLOPs per token of the trunk: 2 per weight (the embedding is a lookup) plus
        attention's QK^T and AV, halved for the causal mask; x3 for training (backward is twice
        the forward)."""
        c = self.config
        weights = sum(p.numel() for p in self.parameters()) - self.embed_tokens.weight.numel()
        attention = 2 * 2 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * seq_len / 2
        return (3 if training else 1) * (2 * weights + attention)


# ---- The causal language model -------------------------------------------------------------
class CausalLMOutput(NamedTuple):
    logits: torch.Tensor | None  # (B, T, V), or (B, logits_to_keep, V); None when trained on `targets`
    loss: torch.Tensor | None = None


class MiniLlama(nn.Module):
    """The causal LM: `LlamaModel` + LM head (optionally tied to the embedding)."""

    def __init__(self, config: ModelConfig, init: bool = True):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.workspace = Workspace()  # the fused loss's buffers, reused from step to step
        if init:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """The trunk's initialisation (`LlamaModel.init_weights`), then the head's."""
        self.model.init_weights(generator)
        nn.init.normal_(self.lm_head.weight, 0.0, self.config.initializer_range, generator=generator)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.model.gradient_checkpointing = enabled

    def blocks(self) -> nn.ModuleList:
        """The repeated blocks (sharded one by one under FSDP)."""
        return self.model.layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                cache: KVCache | None = None, logits_to_keep: int = 0,
                label_smoothing: float = 0.0, targets: torch.Tensor | None = None,
                cache_position: torch.Tensor | None = None) -> CausalLMOutput:
        """input_ids (B, T); attention_mask (B, T) 1 = token, 0 = padding; position_ids (B, T),
        derived from the mask (and the cache) when omitted; labels (B, T) unshifted, -100 ignored;
        cache: a `KVCache` to read past keys from and append to; logits_to_keep: only the last n
        positions go through the head (1 for generation). Returns (logits, loss).

        targets (B, T), already shifted (training): the loss comes from the fused chunked head
        (`linear_cross_entropy`) and logits are not materialised (returned as None).

        cache_position (T,): write the new keys at these cache slots and attend over all of them
        (the cache's fixed-size view, for a compiled decode step); the caller then advances the cache."""
        mask, position_ids = prepare_attention(input_ids, attention_mask, position_ids, cache, cache_position)
        hidden = self.model(input_ids, position_ids, mask, cache, cache_position)  # (B, T, C)
        if cache is not None and cache_position is None:
            cache.advance(input_ids.shape[1])
        if targets is not None:
            loss = linear_cross_entropy(hidden, self.lm_head.weight, targets, label_smoothing, self.workspace)
            return CausalLMOutput(None, loss)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)  # (B, T, V)
        loss = None if labels is None else causal_lm_loss(logits, labels, label_smoothing)
        return CausalLMOutput(logits, loss)

    # ---- bookkeeping ---------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied head counts once); optionally without the token embedding."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.model.embed_tokens.weight.numel()
        return total

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """The trunk's matmul FLOPs per token (`LlamaModel.flops_per_token`) plus the head's."""
        head = 2 * self.lm_head.weight.numel() * (3 if training else 1)
        return self.model.flops_per_token(seq_len, training) + head

    # ---- model directories (transformers loads them too) --------------------------------
    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False,
                        inputs: tuple[str | os.PathLike | None, ...] = ()) -> None:
        """Write `config.json` + `model.safetensors` + checksum manifest, atomically. `directory`
        must be new, empty or an earlier model directory (`overwrite` replaces anything else but
        one of `inputs`)."""
        from minillama.files import atomic_directory

        with atomic_directory(directory, "model", overwrite=overwrite, inputs=inputs) as tmp:
            io.write_causal_lm_dir(self.config, self.state_dict(), tmp)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> MiniLlama:
        """Load a directory written by `save_pretrained`, `save_hf` or transformers (Llama/Qwen2).
        Loading is strict and verifies checksums when the directory has them."""
        directory = Path(directory)
        config = load_config(directory)
        with torch.device("meta"):
            model = cls(config, init=False)
        quantization = quantization_config(directory)
        if quantization is not None:  # written by `minillama quantize`: some Linears hold integer codes
            from minillama.quant.linear import make_quantized_skeleton

            make_quantized_skeleton(model, quantization)
        io.load_strictly(model, io.read_state(directory), directory)
        model.model.rotary_emb.reset_inv_freq()  # a buffer, not stored: computed from the config
        return model.to(device=device, dtype=dtype) if dtype else model.to(device)
