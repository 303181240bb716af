"""The field's own encoder–decoders built to a `Seq2SeqConfig`, to measure ours against: transformers'
`MarianMTModel` and a translator on PyTorch's `torch.nn.Transformer` layers. Both are called as
`MiniSeq2Seq` is, `model(input_ids, attention_mask, labels=..., label_smoothing=...)` returning
(logits, loss), so the translation loss, the validation loss and the batches of
`seq2seq.train` serve them unchanged (benchmarks/bench_seq2seq.py, experiments/seq2seq_baseline.py).
Each has its own greedy decoding: `generate` for Marian, a plain loop for nn.Transformer.
Shapes: B batch, S source tokens, T target tokens, C d_model, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minillama.model.loss import token_cross_entropy
from minillama.seq2seq.config import Seq2SeqConfig, config_to_hf_dict
from minillama.seq2seq.model import ACTIVATION_FNS, Seq2SeqOutput, shift_tokens_right, sinusoidal_table


class MarianTranslator(nn.Module):
    """transformers' `MarianMTModel` of the same shape, with transformers' own initialisation
    (normal, std `init_std`) unless given weights. The loss is torch's cross-entropy of its logits
    (MarianMTModel's own has no label smoothing)."""

    def __init__(self, config: Seq2SeqConfig, state_dict: dict[str, torch.Tensor] | None = None):
        from transformers import MarianConfig, MarianMTModel

        super().__init__()
        if config.normalize_before:
            raise ValueError("MarianMTModel is post-norm only: normalize_before must be False")
        self.config = config
        hf = MarianConfig.from_dict(config_to_hf_dict(config))
        hf._attn_implementation = "sdpa"
        self.marian = MarianMTModel(hf)
        if state_dict is not None:  # ours: the same names, positions are computed (not in the dict)
            missing, unexpected = self.marian.load_state_dict(state_dict, strict=False)
            if unexpected or any("embed_positions" not in k for k in missing):
                raise ValueError(f"weights do not fit MarianMTModel: missing {missing}, unexpected {unexpected}")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, *, label_smoothing: float = 0.0) -> Seq2SeqOutput:
        """Teacher-forced logits (B, T, V) of labels (B, T) shifted right, and their mean loss (-100 ignored)."""
        from transformers.models.marian.modeling_marian import shift_tokens_right as marian_shift

        decoder_input_ids = marian_shift(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
        logits = self.marian(input_ids=input_ids, attention_mask=attention_mask,
                             decoder_input_ids=decoder_input_ids).logits
        return Seq2SeqOutput(logits, token_cross_entropy(logits, labels, label_smoothing))

    @torch.no_grad()
    def greedy_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """`MarianMTModel.generate`, greedy: (B, 1 + n), the decoder start token first, padded after EOS."""
        return self.marian.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                    num_beams=1, max_new_tokens=max_new_tokens)


class TorchTransformerMT(nn.Module):
    """`torch.nn.Transformer` as the paper's translator: shared token embeddings N(0, 1 / C) scaled by
    sqrt(C), sinusoidal positions (Marian's table), dropout on their sum, and an output projection
    tied to the embeddings plus a learned bias. The layers are PyTorch's, Xavier-initialised by
    nn.Transformer; the dropouts and final LayerNorms follow the config as ours do: attention and
    activation dropout set to the config's (nn.Transformer puts `dropout` on both), and no final
    LayerNorm after a post-norm stack (nn.Transformer always adds one)."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        c = config
        if (c.encoder_attention_heads, c.encoder_ffn_dim) != (c.decoder_attention_heads, c.decoder_ffn_dim):
            raise ValueError("nn.Transformer has one head count and one feed-forward width for both stacks")
        if not (c.share_encoder_decoder_embeddings and c.tie_word_embeddings):
            raise ValueError("TorchTransformerMT shares and ties its embeddings")
        self.config = c
        self.embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0
        self.embed = nn.Embedding(c.vocab_size, c.d_model, c.pad_token_id)
        self.register_buffer("positions", sinusoidal_table(c.max_position_embeddings, c.d_model), persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        self.transformer = nn.Transformer(c.d_model, c.encoder_attention_heads, c.encoder_layers, c.decoder_layers,
                                          c.encoder_ffn_dim, c.dropout, ACTIVATION_FNS[c.activation_function],
                                          layer_norm_eps=c.layer_norm_eps, batch_first=True,
                                          norm_first=c.normalize_before)
        for layer in [*self.transformer.encoder.layers, *self.transformer.decoder.layers]:
            for attention in (layer.self_attn, getattr(layer, "multihead_attn", None)):
                if attention is not None:
                    attention.dropout = c.attention_dropout
            layer.dropout.p = c.activation_dropout  # the one between the feed-forward's two linears
        if not c.normalize_before:
            self.transformer.encoder.norm = self.transformer.decoder.norm = None
        # its evaluation fast path packs padded sources into nested tensors (a prototype API, which warns)
        self.transformer.encoder.use_nested_tensor = False
        self.output_bias = nn.Parameter(torch.zeros(c.vocab_size))
        with torch.no_grad():
            nn.init.normal_(self.embed.weight, std=c.d_model ** -0.5)
            self.embed.weight[c.pad_token_id].zero_()

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, C)
        return self.dropout(self.embed(ids) * self.embed_scale + self.positions[:ids.shape[1]])

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) -> memory (B, S, C)."""
        padding = None if attention_mask is None else attention_mask == 0
        return self.transformer.encoder(self._embed(input_ids), src_key_padding_mask=padding)

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> hidden (B, T, C), each position seeing itself and those before it."""
        T = decoder_input_ids.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=memory.device).triu(1)  # True: may not attend
        padding = None if attention_mask is None else attention_mask == 0
        return self.transformer.decoder(self._embed(decoder_input_ids), memory, tgt_mask=causal, tgt_is_causal=True,
                                        memory_key_padding_mask=padding)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., V)
        return F.linear(hidden, self.embed.weight, self.output_bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, *, label_smoothing: float = 0.0) -> Seq2SeqOutput:
        """Teacher-forced logits (B, T, V) of labels (B, T) shifted right, and their mean loss (-100 ignored)."""
        c = self.config
        decoder_input_ids = shift_tokens_right(labels, c.pad_token_id, c.decoder_start_token_id)
        logits = self.logits(self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask))
        return Seq2SeqOutput(logits, token_cross_entropy(logits, labels, label_smoothing))

    @torch.no_grad()
    def greedy_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy translation, (B, 1 + n) as `seq2seq.decode.generate_ids`. No cache: each step runs the
        decoder over the whole target so far (nn.Transformer keeps no keys and values between calls)."""
        c = self.config
        memory = self.encode(input_ids, attention_mask)
        out = torch.full((input_ids.shape[0], 1), c.decoder_start_token_id, dtype=torch.long, device=input_ids.device)
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            token = self.logits(self.decode(out, memory, attention_mask)[:, -1]).argmax(-1)
            token = token.masked_fill(finished, c.pad_token_id)
            finished |= token == c.eos_token_id
            out = torch.cat([out, token[:, None]], dim=1)
            if bool(finished.all()):
                break
        return out
