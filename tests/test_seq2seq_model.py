"""The hand-written encoder–decoder against real references: transformers' MarianMTModel (both
ways: its directories load here, ours load there) and torch.nn.Transformer (pre- and post-norm)."""

import json

import pytest
import torch
import torch.nn.functional as F

from minillama.errors import CheckpointError
from minillama.seq2seq.config import Seq2SeqConfig
from minillama.seq2seq.model import MiniSeq2Seq, shift_tokens_right, sinusoidal_table

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=61, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
            decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40, max_position_embeddings=40,
            pad_token_id=1, eos_token_id=2, decoder_start_token_id=1, dropout=0.0)

# id -> MarianConfig overrides
CONFIGS = {
    "shared-tied-gelu": dict(activation_function="gelu", scale_embedding=True),
    "shared-untied-relu": dict(activation_function="relu", tie_word_embeddings=False),
    "separate-tied-swish": dict(activation_function="swish", share_encoder_decoder_embeddings=False,
                                decoder_vocab_size=53, scale_embedding=True),
    "separate-untied-silu": dict(activation_function="silu", share_encoder_decoder_embeddings=False,
                                 tie_word_embeddings=False),
}


def random_marian(overrides: dict, seed: int = 0):
    """A seeded MarianMTModel with every weight random (norms, biases and final_logits_bias too)."""
    torch.manual_seed(seed)
    config = transformers.MarianConfig(**{**BASE, **overrides})
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "embed_positions" in name:  # a fixed table (a frozen parameter in transformers)
                continue
            param.add_(0.1 * torch.randn_like(param)) if param.dim() == 1 else param.normal_(0, 0.2)
        model.final_logits_bias.normal_(0, 0.5)
        if config.share_encoder_decoder_embeddings and not config.tie_word_embeddings:
            # transformers ties nothing then, not even the shared embedding's other names: keep them equal
            model.model.encoder.embed_tokens.weight.copy_(model.model.shared.weight)
            model.model.decoder.embed_tokens.weight.copy_(model.model.shared.weight)
    return model


def padded_batch(vocab: int, seed: int = 1):
    """Source (B, S) right-padded with mask, decoder inputs (B, T)."""
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(3, vocab, (3, 11), generator=g)
    mask = torch.ones_like(source)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    source = source.masked_fill(mask == 0, 1)
    target = torch.randint(3, vocab, (3, 9), generator=g)
    return source, mask, target


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def marian_dir(request, tmp_path_factory):
    model = random_marian(CONFIGS[request.param])
    out = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(out)
    return model, out


def test_a_marian_directory_loads_and_gives_its_logits(marian_dir):
    reference, directory = marian_dir
    ours = MiniSeq2Seq.from_pretrained(directory).eval()
    source, mask, target = padded_batch(ours.config.vocab_size)
    target = target.clamp(max=ours.config.decoder_vocab_size - 1)
    with torch.no_grad():
        expected = reference(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
        got = ours(source, mask, decoder_input_ids=target).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_loss_matches_marian_with_padding_ignored(marian_dir):
    reference, directory = marian_dir
    ours = MiniSeq2Seq.from_pretrained(directory).eval()
    source, mask, labels = padded_batch(ours.config.vocab_size, seed=2)
    labels = labels.clamp(max=ours.config.decoder_vocab_size - 1)
    labels[0, 5:] = -100  # a shorter target: padding counts for no loss
    with torch.no_grad():
        expected = reference(input_ids=source, attention_mask=mask, labels=labels).loss
        got = ours(source, mask, labels=labels).loss
        smoothed = ours(source, mask, labels=labels, label_smoothing=0.1).loss
        logits = reference(input_ids=source, attention_mask=mask, labels=labels).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    reference_smoothed = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                         label_smoothing=0.1)
    torch.testing.assert_close(smoothed, reference_smoothed, atol=1e-5, rtol=1e-5)


def test_round_trip_is_bitwise_and_transformers_loads_our_export(marian_dir, tmp_path):
    from safetensors.torch import load_file

    reference, directory = marian_dir
    ours = MiniSeq2Seq.from_pretrained(directory)
    ours.save_pretrained(tmp_path / "export")
    theirs, exported = load_file(directory / "model.safetensors"), load_file(tmp_path / "export" / "model.safetensors")
    assert sorted(exported) == sorted(theirs)
    assert all(torch.equal(exported[k], theirs[k]) for k in theirs)
    again = MiniSeq2Seq.from_pretrained(tmp_path / "export")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))
    loaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "export").eval()
    assert type(loaded).__name__ == "MarianMTModel"
    source, mask, target = padded_batch(ours.config.vocab_size, seed=3)
    target = target.clamp(max=ours.config.decoder_vocab_size - 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits,
                                   reference(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_fresh_model_exports_to_marian_with_equal_logits(tmp_path, seed):
    config = Seq2SeqConfig(**{**BASE, "activation_function": "relu", "scale_embedding": True})
    torch.manual_seed(seed)
    ours = MiniSeq2Seq(config).eval()
    with torch.no_grad():
        for param in ours.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    ours.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "marian"
    reference = transformers.MarianMTModel.from_pretrained(tmp_path / "m").eval()
    source, mask, target = padded_batch(config.vocab_size, seed)
    with torch.no_grad():
        torch.testing.assert_close(ours(source, mask, decoder_input_ids=target).logits,
                                   reference(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits,
                                   atol=1e-5, rtol=1e-5)


def test_positions_are_marians_table():
    reference = transformers.models.marian.modeling_marian.MarianSinusoidalPositionalEmbedding(50, 24)
    torch.testing.assert_close(sinusoidal_table(50, 24), reference.create_weight(), atol=1e-6, rtol=0)
    odd = transformers.models.marian.modeling_marian.MarianSinusoidalPositionalEmbedding(9, 7)
    torch.testing.assert_close(sinusoidal_table(9, 7), odd.create_weight(), atol=1e-6, rtol=0)


def test_a_pre_norm_directory_is_refused_by_transformers_and_loads_here(tmp_path):
    config = Seq2SeqConfig(**{**BASE, "normalize_before": True})
    model = MiniSeq2Seq(config).eval()
    model.save_pretrained(tmp_path / "pre")
    again = MiniSeq2Seq.from_pretrained(tmp_path / "pre")
    assert again.config.normalize_before and again.model.encoder.layer_norm is not None
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    with pytest.raises((ValueError, KeyError)):
        transformers.AutoConfig.from_pretrained(tmp_path / "pre")


def test_a_corrupted_weight_file_is_refused(tmp_path):
    model = MiniSeq2Seq(Seq2SeqConfig(**BASE))
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        MiniSeq2Seq.from_pretrained(tmp_path / "m")


def test_a_decoder_only_directory_is_not_a_seq2seq_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not a seq2seq"):
        MiniSeq2Seq.from_pretrained(tmp_path)


def test_shift_tokens_right_is_marians():
    from transformers.models.marian.modeling_marian import shift_tokens_right as theirs

    labels = torch.tensor([[5, 6, 2, -100], [7, 2, -100, -100]])
    assert torch.equal(shift_tokens_right(labels, 1, 0), theirs(labels, 1, 0))


# ---- torch.nn.Transformer with copied weights ----------------------------------------------------
def copy_attention(mha: torch.nn.MultiheadAttention, ours) -> None:
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        mha.out_proj.weight.copy_(ours.out_proj.weight)
        mha.out_proj.bias.copy_(ours.out_proj.bias)


def copy_norm(norm: torch.nn.LayerNorm, ours: torch.nn.LayerNorm) -> None:
    with torch.no_grad():
        norm.weight.copy_(ours.weight)
        norm.bias.copy_(ours.bias)


def torch_transformer_like(model: MiniSeq2Seq) -> torch.nn.Transformer:
    """nn.Transformer holding `model`'s blocks' weights. Post-norm: its final encoder / decoder
    LayerNorms are removed (the paper's and Marian's stacks end with the last block's norm)."""
    c = model.config
    reference = torch.nn.Transformer(c.d_model, c.encoder_attention_heads, c.encoder_layers, c.decoder_layers,
                                     c.encoder_ffn_dim, dropout=0.0, activation=c.activation_function,
                                     batch_first=True, norm_first=c.normalize_before).eval()
    for theirs, ours in zip(reference.encoder.layers, model.model.encoder.layers):
        copy_attention(theirs.self_attn, ours.self_attn)
        copy_norm(theirs.norm1, ours.self_attn_layer_norm)
        copy_norm(theirs.norm2, ours.final_layer_norm)
        theirs.linear1.load_state_dict(ours.fc1.state_dict())
        theirs.linear2.load_state_dict(ours.fc2.state_dict())
    for theirs, ours in zip(reference.decoder.layers, model.model.decoder.layers):
        copy_attention(theirs.self_attn, ours.self_attn)
        copy_attention(theirs.multihead_attn, ours.encoder_attn)
        copy_norm(theirs.norm1, ours.self_attn_layer_norm)
        copy_norm(theirs.norm2, ours.encoder_attn_layer_norm)
        copy_norm(theirs.norm3, ours.final_layer_norm)
        theirs.linear1.load_state_dict(ours.fc1.state_dict())
        theirs.linear2.load_state_dict(ours.fc2.state_dict())
    if c.normalize_before:
        copy_norm(reference.encoder.norm, model.model.encoder.layer_norm)
        copy_norm(reference.decoder.norm, model.model.decoder.layer_norm)
    else:
        reference.encoder.norm = reference.decoder.norm = None
    return reference


@pytest.mark.filterwarnings("ignore::UserWarning")  # nn.Transformer's notes on its nested-tensor fast path
@pytest.mark.parametrize("pre_norm", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_blocks_equal_torch_nn_transformer(pre_norm, activation):
    config = Seq2SeqConfig(**{**BASE, "decoder_layers": 2, "decoder_attention_heads": 4, "decoder_ffn_dim": 48,
                              "normalize_before": pre_norm, "activation_function": activation})
    torch.manual_seed(0)
    model = MiniSeq2Seq(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    reference = torch_transformer_like(model)
    source, mask, target = padded_batch(config.vocab_size)
    with torch.no_grad():
        # the stacks alone (nn.Transformer has no embeddings): the same embedded inputs for both
        encoder, decoder = model.model.encoder, model.model.decoder
        src = encoder.embed_tokens(source) * encoder.embed_scale + encoder.embed_positions(0, source.shape[1])
        tgt = decoder.embed_tokens(target) * decoder.embed_scale + decoder.embed_positions(0, target.shape[1])
        causal = torch.nn.Transformer.generate_square_subsequent_mask(target.shape[1])
        expected = reference(src, tgt, tgt_mask=causal, src_key_padding_mask=mask == 0,
                             memory_key_padding_mask=mask == 0, tgt_is_causal=True)
        memory = model.encode(source, mask)
        got = model.decode(target, memory, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_model_imports_no_trainer_decoder_data_or_cli():
    """Like minillama.model: the network and its files know nothing of training, decoding or the CLI."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "src" / "minillama" / "seq2seq"
    forbidden = ("minillama.train", "minillama.data", "minillama.generate", "minillama.finetune",
                 "minillama.seq2seq.train", "minillama.seq2seq.decode", "minillama.seq2seq.data",
                 "minillama.seq2seq.commands", "minillama.cli")
    for name in ("model.py", "config.py", "io.py"):
        tree = ast.parse((package / name).read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not [m for m in imported if m and m.startswith(forbidden)], name


@pytest.mark.parametrize("tied", [True, False])
def test_initialisation_is_the_papers(tied):
    # Embeddings N(0, 1/d) (scaled by sqrt(d) they match the positions' unit size), the padding row
    # zero, projections Xavier-uniform: a tied head must not re-initialise the shared embedding.
    torch.manual_seed(0)
    config = Seq2SeqConfig(vocab_size=4000, d_model=128, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256,
                           decoder_ffn_dim=256, pad_token_id=1, eos_token_id=0, decoder_start_token_id=1,
                           tie_word_embeddings=tied)
    model = MiniSeq2Seq(config)
    embedding = model.model.decoder.embed_tokens.weight
    assert abs(embedding.std().item() - 128 ** -0.5) < 0.005
    assert not embedding[1].any()
    assert (model.lm_head.weight is embedding) == tied
    q = model.model.encoder.layers[0].self_attn.q_proj.weight
    assert q.abs().max().item() <= (6 / 256) ** 0.5 and abs(q.std().item() - (2 / 256) ** 0.5) < 0.005
    if not tied:  # its own Xavier-uniform matrix
        bound = (6 / (4000 + 128)) ** 0.5
        assert model.lm_head.weight.abs().max().item() <= bound and model.lm_head.weight[1].any()
