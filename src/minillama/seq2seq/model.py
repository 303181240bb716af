"""The encoder–decoder Transformer of "Attention Is All You Need", top to bottom like its figure:

    scaled token embeddings + sinusoidal positions -> encoder blocks (self-attention, feed-forward)
    -> decoder blocks (masked self-attention, cross-attention to the encoder, feed-forward)
    -> output projection (+ final_logits_bias) and the loss.

Every sublayer is wrapped in a residual connection and a LayerNorm: after the sum (post-norm, the
paper's and Marian's layout) or before the sublayer (pre-norm, `normalize_before`, with a final
LayerNorm after each stack). Parameter names are those of `transformers.MarianMTModel`, so its
state dict is ours. Decoding (greedy, beam, sampling) lives in `seq2seq/decode.py`; it calls
`encode` once, then `decode` one token at a time through a `DecoderCache`.
Shapes: B batch, S source tokens, T target tokens, H heads, D head width, C d_model, V vocabulary.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from minillama.model.loss import Workspace, linear_cross_entropy, token_cross_entropy
from minillama.seq2seq.config import Seq2SeqConfig, load_config

ACTIVATION_FNS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "swish": F.silu}


# ---- Positions -----------------------------------------------------------------------------------
def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    """(positions, dim) float32: sin(p / 10000^(2i/dim)) in the first half of each row and the cos of
    the same angles in the second half (Marian's layout; the paper interleaves them, which is the same
    model up to a permutation of the features). Computed in float64, as transformers does with NumPy."""
    p = torch.arange(positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angles = p / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (P, dim)
    half = (dim + 1) // 2
    table = torch.empty(positions, dim, dtype=torch.float64)
    table[:, :half] = torch.sin(angles[:, 0::2])
    table[:, half:] = torch.cos(angles[:, 1::2])
    return table.float()


class SinusoidalPositions(nn.Module):
    """A fixed table, not learned and not stored: a buffer recomputed from the config."""

    def __init__(self, positions: int, dim: int):
        super().__init__()
        self.register_buffer("weight", sinusoidal_table(positions, dim), persistent=False)

    def forward(self, start: int, length: int) -> torch.Tensor:  # -> (length, C)
        if start + length > self.weight.shape[0]:
            raise ValueError(f"a sequence of {start + length} tokens is longer than the model's "
                             f"{self.weight.shape[0]} positions (max_position_embeddings)")
        return self.weight[start:start + length]


# ---- Attention -------------------------------------------------------------------------------------
def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) with 1 = token -> bool (B, 1, 1, S), True = may attend; None when nothing is padding."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention. Self-attention takes keys and values from its own input, cross-attention
    from the encoder's output: `keys_values` projects them, so the decoder can compute the encoder's
    once per source (`DecoderCache`) and reuse them at every step."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, d_model // heads, dropout
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.q_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, H, L, D)
        return x.view(*x.shape[:2], self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, C) -> keys and values, each (B, H, S, D)."""
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """softmax(Q K^T / sqrt(D) + mask) V for queries from x (B, T, C) -> (B, T, C).
        mask: bool, broadcastable to (B, H, T, S); causal: position t sees keys up to t (T == S)."""
        q = self._split(self.q_proj(x))  # (B, H, T, D)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(x.shape))


class Block(nn.Module):
    """What encoder and decoder blocks share: the residual + LayerNorm around each sublayer, and the
    position-wise feed-forward fc2(activation(fc1(x))) (transformers keeps fc1 / fc2 on the block)."""

    def __init__(self, config: Seq2SeqConfig, ffn_dim: int):
        super().__init__()
        self.pre_norm, self.dropout = config.normalize_before, config.dropout
        self.activation = ACTIVATION_FNS[config.activation_function]
        self.activation_dropout = config.activation_dropout
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training))

    def sublayer(self, x: torch.Tensor, norm: nn.LayerNorm, f) -> torch.Tensor:
        """Post-norm: LayerNorm(x + f(x)), the paper's; pre-norm: x + f(LayerNorm(x)), whose residual
        path is never normalised, so gradients reach the first layers unscaled (easier to train deep)."""
        if self.pre_norm:
            return x + F.dropout(f(norm(x)), self.dropout, self.training)
        return norm(x + F.dropout(f(x), self.dropout, self.training))


class EncoderLayer(Block):
    def __init__(self, config: Seq2SeqConfig):
        c = config
        super().__init__(c, c.encoder_ffn_dim)
        self.self_attn = Attention(c.d_model, c.encoder_attention_heads, c.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(c.d_model, c.layer_norm_eps)
        self.final_layer_norm = nn.LayerNorm(c.d_model, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # (B, S, C)
        x = self.sublayer(x, self.self_attn_layer_norm,
                          lambda h: self.self_attn(h, *self.self_attn.keys_values(h), mask=mask))
        return self.sublayer(x, self.final_layer_norm, self.feed_forward)


class DecoderLayer(Block):
    def __init__(self, config: Seq2SeqConfig, index: int):
        c = config
        super().__init__(c, c.decoder_ffn_dim)
        self.index = index
        self.self_attn = Attention(c.d_model, c.decoder_attention_heads, c.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(c.d_model, c.layer_norm_eps)
        self.encoder_attn = Attention(c.d_model, c.decoder_attention_heads, c.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(c.d_model, c.layer_norm_eps)
        self.final_layer_norm = nn.LayerNorm(c.d_model, c.layer_norm_eps)

    def _self_attention(self, h: torch.Tensor, cache: DecoderCache | None) -> torch.Tensor:
        """Masked self-attention: each target position sees itself and the positions before it."""
        k, v = self.self_attn.keys_values(h)
        if cache is None:
            return self.self_attn(h, k, v, causal=h.shape[1] > 1)
        k, v = cache.append(self.index, k, v)  # every key so far, (B, H, cache.length + T, D)
        T, S = h.shape[1], k.shape[2]
        mask = None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=h.device).tril(S - T)
        return self.self_attn(h, k, v, mask=mask)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, memory_mask: torch.Tensor | None,
                cache: DecoderCache | None = None) -> torch.Tensor:
        """x (B, T, C): the target so far; memory (B, S, C): the encoder's output (unused with a cache,
        which holds its keys and values)."""
        x = self.sublayer(x, self.self_attn_layer_norm, lambda h: self._self_attention(h, cache))
        cross = cache.cross[self.index] if cache is not None else self.encoder_attn.keys_values(memory)
        x = self.sublayer(x, self.encoder_attn_layer_norm, lambda h: self.encoder_attn(h, *cross, mask=memory_mask))
        return self.sublayer(x, self.final_layer_norm, self.feed_forward)


# ---- The stacks ------------------------------------------------------------------------------------
class Encoder(nn.Module):
    def __init__(self, config: Seq2SeqConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.dropout = config.dropout
        self.embed_tokens = embed_tokens
        self.embed_positions = SinusoidalPositions(config.max_position_embeddings, config.d_model)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model, config.layer_norm_eps) if config.normalize_before else None

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # -> (B, S, C)
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions(0, input_ids.shape[1])
        x = F.dropout(x, self.dropout, self.training)
        for layer in self.layers:
            x = layer(x, mask)
        return x if self.layer_norm is None else self.layer_norm(x)


class Decoder(nn.Module):
    def __init__(self, config: Seq2SeqConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.dropout = config.dropout
        self.embed_tokens = embed_tokens
        self.embed_positions = SinusoidalPositions(config.max_position_embeddings, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model, config.layer_norm_eps) if config.normalize_before else None

    def forward(self, input_ids: torch.Tensor, memory: torch.Tensor | None, memory_mask: torch.Tensor | None,
                cache: DecoderCache | None = None) -> torch.Tensor:  # (B, T) -> (B, T, C)
        start = 0 if cache is None else cache.length
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions(start, input_ids.shape[1])
        x = F.dropout(x, self.dropout, self.training)
        for layer in self.layers:
            x = layer(x, memory, memory_mask, cache)
        if cache is not None:
            cache.length += input_ids.shape[1]
        return x if self.layer_norm is None else self.layer_norm(x)


class Seq2SeqModel(nn.Module):
    """Encoder and decoder, with their embeddings (transformers' `MarianModel`)."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        if config.share_encoder_decoder_embeddings:
            self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
            encoder_embed = decoder_embed = self.shared
        else:
            encoder_embed = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
            decoder_embed = nn.Embedding(config.decoder_vocab_size, config.d_model, config.pad_token_id)
        self.encoder = Encoder(config, encoder_embed)
        self.decoder = Decoder(config, decoder_embed)


# ---- The decoder's cache ---------------------------------------------------------------------------
class DecoderCache:
    """What decoding keeps between steps, per decoder layer: the self-attention keys and values of
    the target so far (B, H, max_len, D), filled one step at a time, and the cross-attention keys and
    values of the encoder's output (B, H, S, D), computed once per source."""

    def __init__(self, model: MiniSeq2Seq, memory: torch.Tensor, memory_mask: torch.Tensor | None, max_len: int,
                 repeat: int = 1):
        """memory (B, S, C) and its mask (B, 1, 1, S) or None; `repeat`: target rows per source (beams),
        rows i * repeat ... (i + 1) * repeat - 1 reading source i."""
        decoder = model.model.decoder
        B, dtype, device = memory.shape[0] * repeat, memory.dtype, memory.device
        self.cross = [tuple(t.repeat_interleave(repeat, dim=0) for t in layer.encoder_attn.keys_values(memory))
                      for layer in decoder.layers]
        self.memory_mask = None if memory_mask is None else memory_mask.repeat_interleave(repeat, dim=0)
        shape = [(B, layer.self_attn.heads, max_len, layer.self_attn.head_dim) for layer in decoder.layers]
        self.keys = [torch.zeros(s, dtype=dtype, device=device) for s in shape]
        self.values = [torch.zeros(s, dtype=dtype, device=device) for s in shape]
        self.length = 0  # target tokens cached so far (every row alike)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys and values (B, H, T, D); return all so far (B, H, length + T, D)."""
        end = self.length + k.shape[2]
        if end > self.keys[layer].shape[2]:
            raise ValueError(f"the cache holds {self.keys[layer].shape[2]} target tokens, {end} were asked for")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i] (beam search). Rows stay with their source (beams of one
        sentence are permuted among themselves), so the cross-attention cache is unchanged. Only the
        filled positions move: copying all max_len of them every step would cost more than the step."""
        n = self.length
        for tensors in (self.keys, self.values):
            for t in tensors:
                t[:, :, :n] = t[:, :, :n].index_select(0, rows)


# ---- The translation model -------------------------------------------------------------------------
class Seq2SeqOutput(NamedTuple):
    logits: torch.Tensor | None  # (B, T, V); None when trained on labels (the fused loss needs none)
    loss: torch.Tensor | None = None


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Labels (B, T) -> decoder inputs (B, T): the start token, then the labels but the last (teacher
    forcing: position t reads target token t - 1 and predicts token t); -100 becomes padding."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill_(shifted == -100, pad_token_id)


class MiniSeq2Seq(nn.Module):
    """Encoder–decoder with an output projection: transformers' `MarianMTModel`, parameter for parameter."""

    def __init__(self, config: Seq2SeqConfig, init: bool = True):
        super().__init__()
        self.config = config
        self.model = Seq2SeqModel(config)
        self.lm_head = nn.Linear(config.d_model, config.decoder_vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.decoder.embed_tokens.weight
        # Marian's fixed bias on the logits: zeros unless imported (a buffer, never trained)
        self.register_buffer("final_logits_bias", torch.zeros(1, config.decoder_vocab_size))
        self.workspace = Workspace()  # the fused loss's buffers, kept between steps
        if init:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The paper's (and fairseq's) initialisation: Xavier-uniform projections, zero biases,
        embeddings N(0, 1 / d_model) so that scaled by sqrt(d_model) they match the positions' unit
        size, the padding row zero."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module.weight) not in embeddings:  # a tied head is an embedding
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.config.d_model ** -0.5)
                module.weight[self.config.pad_token_id].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.final_logits_bias.zero_()

    def blocks(self) -> nn.ModuleList:
        """The repeated blocks (sharded one by one under FSDP; Muon's matrices)."""
        return nn.ModuleList([*self.model.encoder.layers, *self.model.decoder.layers])

    # ---- the three steps decoding calls -------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S), right-padded with attention_mask (B, S) 1 = token -> memory (B, S, C)."""
        return self.model.encoder(input_ids, padding_mask(attention_mask))

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor | None,
               attention_mask: torch.Tensor | None = None, cache: DecoderCache | None = None) -> torch.Tensor:
        """Target ids (B, T) -> hidden states (B, T, C), attending to memory (B, S, C) (or to the
        cache's copy of it, whose positions continue after the cached tokens)."""
        mask = cache.memory_mask if cache is not None else padding_mask(attention_mask)
        return self.model.decoder(decoder_input_ids, memory, mask, cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., V)
        return self.lm_head(hidden) + self.final_logits_bias

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                label_smoothing: float = 0.0) -> Seq2SeqOutput:
        """Teacher-forced logits (B, T, V), or with labels (B, T) (-100 = no loss: padding) the mean
        cross-entropy, the decoder inputs being the labels shifted right when not given."""
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        memory = self.encode(input_ids, attention_mask)
        hidden = self.decode(decoder_input_ids, memory, attention_mask)
        if labels is None:
            return Seq2SeqOutput(self.logits(hidden))
        if bool(self.final_logits_bias.any()):  # the fused loss has no bias: logits in full
            return Seq2SeqOutput(None, token_cross_entropy(self.logits(hidden), labels, label_smoothing))
        loss = linear_cross_entropy(hidden, self.lm_head.weight, labels, label_smoothing, self.workspace)
        return Seq2SeqOutput(None, loss)

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Matmul FLOPs per target token, counting one source token per target token: 2 per weight
        (embeddings are lookups) plus attention's products; x3 for training."""
        c = self.config
        embeddings = {id(m.weight): m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding)}
        weights = sum(p.numel() for p in self.parameters()) - sum(embeddings.values())
        if c.tie_word_embeddings:
            weights += self.lm_head.weight.numel()
        attention = 2 * 2 * c.d_model * seq_len * (c.encoder_layers + c.decoder_layers / 2 + c.decoder_layers)
        return (3 if training else 1) * (2 * weights + attention)

    # ---- model directories (transformers' MarianMTModel loads them) -----------------------------
    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False,
                        inputs: tuple[str | os.PathLike | None, ...] = ()) -> None:
        """config.json + model.safetensors + checksum manifest, atomically (see `seq2seq/io.py`)."""
        from minillama.files import atomic_directory
        from minillama.seq2seq import io

        with atomic_directory(directory, "model", overwrite=overwrite, inputs=inputs) as tmp:
            io.write_seq2seq_dir(self.config, self.state_dict(), tmp)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> MiniSeq2Seq:
        """Load a directory written by `save_pretrained` or by transformers (MarianMTModel), strictly,
        verifying checksums when it has them."""
        from minillama.model import io as model_io
        from minillama.seq2seq import io

        directory = Path(directory)
        config = load_config(directory)
        with torch.device("meta"):
            model = cls(config, init=False)
        model_io.load_strictly(model, io.read_seq2seq_state(directory, sinusoidal_table), directory)
        for stack in (model.model.encoder, model.model.decoder):  # buffers computed from the config
            stack.embed_positions = SinusoidalPositions(config.max_position_embeddings, config.d_model)
        return model.to(device=device, dtype=dtype) if dtype else model.to(device)
