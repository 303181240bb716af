"""The hand-written BERT against transformers' BertForMaskedLM / BertForSequenceClassification,
built locally at random init with the same weights (a key copy of the state dict)."""

import pytest
import torch

from minillama.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
            max_position_embeddings=40, initializer_range=0.2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, pad_token_id=0)

# id -> (config overrides, batch, sequence length)
CONFIGS = {
    "base": (dict(), 3, 17),
    "one-head-relu": (dict(num_attention_heads=1, hidden_act="relu", num_hidden_layers=1), 2, 9),
    "gelu-new-three-types": (dict(hidden_act="gelu_new", type_vocab_size=3, layer_norm_eps=1e-5), 4, 24),
    "deep-long": (dict(num_hidden_layers=3, hidden_size=48, num_attention_heads=6), 2, 40),
}


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """LayerNorm weights, biases and the MLM bias moved off their init of 1 / 0, so tests see them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def reference_config(config: BertConfig, **extra) -> "transformers.BertConfig":
    return transformers.BertConfig(**config.to_dict(), attn_implementation="eager", **extra)


def padded_batch(config: BertConfig, batch: int, seq: int, seed: int = 1):
    """Random ids with right padding of different lengths per row (row 0 unpadded), token types."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, config.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(1, batch):
        mask[row, seq - 1 - (row * 3) % (seq - 2):] = 0
    ids[mask == 0] = config.pad_token_id
    types = torch.randint(0, config.type_vocab_size, (batch, seq), generator=generator)
    return ids, mask, types


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_masked_lm_matches_transformers(name):
    overrides, batch, seq = CONFIGS[name]
    config = BertConfig(**{**BASE, **overrides})
    torch.manual_seed(0)
    model = perturbed(BertForMaskedLM(config))
    reference = transformers.BertForMaskedLM(reference_config(config)).eval()
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    ids, mask, types = padded_batch(config, batch, seq)
    labels = torch.full_like(ids, -100)
    labels[:, 1::3] = ids[:, 1::3]
    labels[mask == 0] = -100
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=types)
        theirs = reference(ids, attention_mask=mask, token_type_ids=types, labels=labels)
        our_loss = model(ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
    keep = mask.bool()  # padded positions' outputs are defined but meaningless; compare the tokens
    torch.testing.assert_close(ours.logits[keep], theirs.logits[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_loss, theirs.loss, atol=1e-5, rtol=1e-5)
    assert ours.logits.std() > 0.1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sequence_classifier_matches_transformers(name):
    overrides, batch, seq = CONFIGS[name]
    config = BertConfig(**{**BASE, **overrides})
    torch.manual_seed(0)
    model = perturbed(BertForSequenceClassification(config, ["a", "b", "c"]))
    reference = transformers.BertForSequenceClassification(reference_config(config, num_labels=3)).eval()
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    ids, mask, types = padded_batch(config, batch, seq)
    labels = torch.arange(batch) % 3
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=types, labels=labels)
        theirs = reference(ids, attention_mask=mask, token_type_ids=types, labels=labels)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)


def test_state_dict_keys_are_transformers():
    config = BertConfig(**BASE)
    ours = set(BertForMaskedLM(config).state_dict())
    theirs = {k for k in transformers.BertForMaskedLM(reference_config(config)).state_dict()
              if not k.endswith("position_ids")}
    assert ours == theirs
    ours = set(BertForSequenceClassification(config, ["n", "p"]).state_dict())
    theirs = {k for k in transformers.BertForSequenceClassification(reference_config(config)).state_dict()
              if not k.endswith("position_ids")}
    assert ours == theirs


def test_decoder_is_tied_to_word_embeddings():
    model = BertForMaskedLM(BertConfig(**BASE))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    assert not model.bert.embeddings.word_embeddings.weight[0].any()  # the [PAD] row starts at zero


def test_loss_on_selected_positions_equals_full_logits_loss():
    """The head run on the masked positions alone gives the loss of the full logits."""
    config = BertConfig(**BASE)
    torch.manual_seed(0)
    model = perturbed(BertForMaskedLM(config))
    ids, mask, types = padded_batch(config, 2, 12)
    labels = torch.full_like(ids, -100)
    labels[:, 2:5] = ids[:, 2:5]
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        loss = model(ids, attention_mask=mask, labels=labels).loss
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, expected)


def test_a_classifier_takes_a_masked_lm_encoder():
    """Fine-tuning after pretraining: the MLM's encoder, a new pooler and classifier."""
    config = BertConfig(**BASE)
    mlm = BertForMaskedLM(config)
    classifier = BertForSequenceClassification(config, ["n", "p"], backbone=mlm.bert)
    assert classifier.bert.embeddings.word_embeddings.weight is mlm.bert.embeddings.word_embeddings.weight
    assert classifier.bert.pooler is not None
    ids, mask, _ = padded_batch(config, 2, 8)
    assert classifier(ids, attention_mask=mask).logits.shape == (2, 2)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple"):
        BertConfig(**{**BASE, "num_attention_heads": 5})
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig(**{**BASE, "hidden_act": "swish"})
    model = BertForMaskedLM(BertConfig(**BASE))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 41, dtype=torch.long))
