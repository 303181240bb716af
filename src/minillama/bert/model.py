"""BERT written out: an encoder-only Transformer read in both directions, trained by masked
language modelling (Devlin et al. 2019).

    input_ids (B, T), token_type_ids (B, T), attention_mask (B, T)
      -> embeddings: word + learned position + token type, LayerNorm, dropout      (B, T, C)
      -> N encoder layers, post-norm (the original Transformer's placement):
             x = LayerNorm(x + Dropout(Attention(x)))     every token sees every non-pad token
             x = LayerNorm(x + Dropout(W2 GELU(W1 x)))
      -> the MLM head at the selected positions: LayerNorm(GELU(dense(x))) @ E^T + b   (.., V)
      -> or the pooler tanh(dense(x[:, 0])) on [CLS], then dropout and the classifier  (B, labels)

Module and parameter names are transformers' (`bert.encoder.layer.0.attention.self.query.weight`,
`cls.predictions.transform.dense.weight`, `classifier.weight`), so a `BertForMaskedLM` /
`BertForSequenceClassification` directory is a copy of the state dict. The MLM decoder shares the
word embedding's weight and holds its own bias (`cls.predictions.bias`), as transformers' does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from minillama.bert import io
from minillama.bert.config import BertConfig
from minillama.errors import CheckpointError
from minillama.model.config import IGNORE_INDEX

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "gelu_new": lambda: nn.GELU(approximate="tanh"),
               "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh")}


class MaskedLMOutput(NamedTuple):
    logits: torch.Tensor | None  # (B, T, V); None when only the loss was asked for
    loss: torch.Tensor | None = None


class SequenceClassifierOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None


# ---- embeddings -----------------------------------------------------------------------------------
class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """(B, T) ids -> (B, T, C). Positions are 0..T-1 for every row (padding sits at the right)."""
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:T]
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


# ---- one encoder layer ----------------------------------------------------------------------------
class BertSelfAttention(nn.Module):
    """Bidirectional multi-head attention: no causal mask, only padded keys are hidden."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, C); mask (B, 1, 1, T) True = may attend, or None (no padding) -> (B, T, C)."""
        B, T, C = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, D)
            return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout_p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, C)


class BertSelfOutput(nn.Module):
    """The attention's output projection, then the post-norm residual: LayerNorm(x + dropout(W y))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(y)))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)  # transformers' name: attention.self.query
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACTIVATIONS[config.hidden_act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class BertOutput(nn.Module):
    """The feed-forward's second matrix, then the post-norm residual."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, mask, use_reentrant=False)
            else:
                x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    """The sequence's summary: tanh(dense(hidden state of [CLS], the first token))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) 1 = token, 0 = padding -> (B, 1, 1, T) bool for SDPA (every query sees every token);
    None when nothing is padded, which lets SDPA pick its fastest kernel."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class BertModel(nn.Module):
    """Embeddings, the encoder and (optionally) the pooler: input ids -> hidden states (B, T, C)."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"{input_ids.shape[1]} tokens are more than the model's "
                             f"max_position_embeddings {self.config.max_position_embeddings}")
        x = self.embeddings(input_ids, token_type_ids)
        return self.encoder(x, padding_mask(attention_mask, x.dtype))


def init_bert_weights(module: nn.Module, std: float) -> None:
    """transformers' initialisation: normal(0, std) matrices and embeddings (the pad row zero),
    zero biases, LayerNorm weight 1 and bias 0. Embeddings go last: the MLM decoder shares the word
    embedding's weight, and its pad row must end at zero."""
    modules = list(module.modules())
    for m in [m for m in modules if not isinstance(m, nn.Embedding)] + \
             [m for m in modules if isinstance(m, nn.Embedding)]:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---- the heads --------------------------------------------------------------------------------------
class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACTIVATIONS[config.hidden_act]()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform, then the decoder: the word embedding's weight (tied) and a bias of its own."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size, device=word_embeddings.weight.device))
        self.decoder.weight = word_embeddings.weight  # tied: one tensor, two names
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class BertTask(nn.Module):
    """What the two task models share: an encoder at `self.bert`, the hooks the Trainer asks of a
    model, and transformers' directory layout under the subclass's `architecture`."""

    architecture: str
    head_rows = 0.0  # the share of tokens that pass through the vocabulary-sized head in training

    def blocks(self) -> nn.ModuleList:
        return self.bert.encoder.layer

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.bert.encoder.gradient_checkpointing = enabled

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        return encoder_flops_per_token(self.config, seq_len, training, self.head_rows)

    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False) -> None:
        """config.json (with the labels of a classifier) + model.safetensors + checksum manifest,
        atomically, in transformers' layout for `architecture`."""
        from minillama.files import atomic_directory

        labels = getattr(self, "labels", None)
        with atomic_directory(directory, "classifier" if labels else "model", overwrite=overwrite) as tmp:
            io.write_bert_dir(self.config, self.state_dict(), tmp, self.architecture, labels)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> BertTask:
        """Strictly load a directory of this class (ours or transformers')."""
        return io.load_bert(cls, Path(directory), device)


class BertForMaskedLM(BertTask):
    """The encoder (no pooler, as transformers' BertForMaskedLM) and the MLM head."""

    architecture = "BertForMaskedLM"
    head_rows = 0.15  # the head runs on the masked positions only

    def __init__(self, config: BertConfig, init: bool = True):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config, self.bert.embeddings.word_embeddings)
        if init:
            init_bert_weights(self, config.initializer_range)
            nn.init.zeros_(self.cls.predictions.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                label_smoothing: float = 0.0) -> MaskedLMOutput:
        """input_ids (B, T); labels (B, T) = the original token at masked positions, -100 elsewhere.

        Without labels: logits (B, T, V). With labels: the mean cross-entropy over the labelled
        positions only, and no logits: the head runs on those ~15 % of positions alone, which
        spares 85 % of the largest matmul (hidden x vocabulary) of a training step."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        if labels is None:
            return MaskedLMOutput(self.cls(hidden))
        selected = labels != IGNORE_INDEX  # (B, T)
        logits = self.cls(hidden[selected])  # (N, V)
        if logits.shape[0] == 0:  # nothing masked: a zero that still reaches every parameter
            return MaskedLMOutput(None, hidden.sum() * 0.0)
        loss = F.cross_entropy(logits.float(), labels[selected], label_smoothing=label_smoothing)
        return MaskedLMOutput(None, loss)


class BertForSequenceClassification(BertTask):
    """The encoder with its pooler, dropout and a linear classifier on the pooled [CLS] state."""

    architecture = "BertForSequenceClassification"

    def __init__(self, config: BertConfig, labels: list[str], backbone: BertModel | None = None,
                 init: bool = True):
        super().__init__()
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"a classifier needs at least two distinct labels, got {labels}")
        self.config, self.labels = config, list(labels)
        self.bert = backbone if backbone is not None else BertModel(config)
        if self.bert.pooler is None:  # a masked LM's encoder: its pooler is new
            self.bert.pooler = BertPooler(config).to(self.bert.embeddings.word_embeddings.weight.device)
            if init:
                init_bert_weights(self.bert.pooler, config.initializer_range)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, len(labels),
                                    device=self.bert.embeddings.word_embeddings.weight.device)
        if init:
            init_bert_weights(self.classifier if backbone is not None else self, config.initializer_range)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                label_smoothing: float = 0.0) -> SequenceClassifierOutput:
        """input_ids (B, T) starting with [CLS]; labels (B,) class ids -> logits (B, num_labels)
        and the mean cross-entropy when labels are given."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        logits = self.classifier(self.dropout(self.bert.pooler(hidden)))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        return SequenceClassifierOutput(logits, loss)


def encoder_flops_per_token(config: BertConfig, seq_len: int, training: bool, head_rows: float) -> float:
    """Matmul FLOPs per token: 2 per weight per token (x3 with the backward) in the layers, the
    attention scores and mixing (4 T C per layer), and the MLM head on `head_rows` of the tokens."""
    C, L = config.hidden_size, config.num_hidden_layers
    layer = 4 * C * C + 2 * C * config.intermediate_size
    head = head_rows * (C * C + C * config.vocab_size)
    forward = 2 * (L * layer + head) + L * 4 * seq_len * C
    return forward * (3 if training else 1)


def load_bert_dir(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A BERT directory (ours or transformers'), as the class its config.json names."""
    directory = Path(directory)
    classes = {c.architecture: c for c in (BertForMaskedLM, BertForSequenceClassification)}
    found = io.architecture_of(directory)
    io.load_bert_config(directory)  # a model of another family is refused here, by name
    if found not in classes:
        raise CheckpointError(f"{directory} holds a {found or 'model without architectures'}; minillama reads "
                              f"BERT directories of {' or '.join(classes)}")
    return io.load_bert(classes[found], directory, device)
