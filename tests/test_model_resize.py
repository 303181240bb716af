"""`minillama model resize-vocab`: new rows for the extended tokenizer's tokens, old outputs unchanged."""

from __future__ import annotations

import pytest
import torch

from minillama.cli import main
from minillama.data.sources import DATASETS
from minillama.errors import MiniLlamaError
from minillama.files import verify_manifest
from minillama.model import MiniLlama, ModelConfig
from minillama.model.resize import resize_model_dir, resize_token_embeddings
from minillama.tokenizer import Tokenizer
from minillama.tokenizer.extend import extend_tokenizer, old_spellings

SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def setup(small_corpus, tmp_path_factory):
    """(old tokenizer dir, extended tokenizer dir, {tied: model dir}) for the 512-token BPE."""
    root = tmp_path_factory.mktemp("resize")
    chinese = root / "zh.txt"
    chinese.write_text("\n".join(list(DATASETS["tatoeba-zh"].train.documents())[:3000]), encoding="utf-8")
    extend_tokenizer(small_corpus[0], [chinese], 120, root / "ext")
    old = Tokenizer.from_pretrained(small_corpus[0])
    models = {}
    for tied in (True, False):
        torch.manual_seed(0)
        model = MiniLlama(ModelConfig(vocab_size=old.vocab_size, tie_word_embeddings=tied, **SHAPE))
        with torch.no_grad():  # untrained heads are near zero: spread them so the test compares something
            for p in model.parameters():
                p.mul_(5) if p.dim() == 2 else None
        model.save_pretrained(root / f"model-{tied}")
        old.save_pretrained(root / f"model-{tied}")
        models[tied] = root / f"model-{tied}"
    return small_corpus[0], root / "ext", models


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", ["mean", "random", "subword"])
def test_old_columns_of_the_logits_are_unchanged(setup, tmp_path, tied, init, single_thread):
    old_dir, ext_dir, models = setup
    out = tmp_path / "resized"
    assert main(["model", "resize-vocab", "--checkpoint", str(models[tied]), "--tokenizer", str(ext_dir),
                 "--init", init, "--out", str(out)]) == 0
    assert verify_manifest(out, required=True)
    before, after = MiniLlama.from_pretrained(models[tied]).eval(), MiniLlama.from_pretrained(out).eval()
    old, ext = Tokenizer.from_pretrained(old_dir), Tokenizer.from_pretrained(out)
    assert ext.fingerprint() == Tokenizer.from_pretrained(ext_dir).fingerprint()
    assert after.config.vocab_size == ext.vocab_size == old.vocab_size + 120
    assert (after.lm_head.weight is after.model.embed_tokens.weight) == tied
    ids = torch.tensor([old.encode("Once upon a time, Lily saw a big red ball in the park. She was happy.")])
    assert ext.encode("Once upon a time, Lily saw a big red ball in the park. She was happy.") == ids[0].tolist()
    with torch.no_grad():
        a, b = before(ids).logits, after(ids).logits
    assert b.shape[-1] == ext.vocab_size and a.abs().max() > 0.1
    torch.testing.assert_close(b[..., :old.vocab_size], a, atol=1e-6, rtol=0)
    new_rows = after.model.embed_tokens.weight[old.vocab_size:]
    if init == "mean":
        torch.testing.assert_close(new_rows[0], before.model.embed_tokens.weight.mean(0))
    if init == "subword":
        spell = old_spellings(ext, old.vocab_size)
        k = next(i for i, s in spell.items() if len(s) > 1)
        torch.testing.assert_close(new_rows[k - old.vocab_size], before.model.embed_tokens.weight[spell[k]].mean(0))
        assert all(ext.decode_bytes(s) == ext.id_to_bytes(i) for i, s in spell.items())


def test_resized_model_exports_to_transformers(setup, tmp_path, single_thread):
    transformers = pytest.importorskip("transformers")
    from minillama.export import save_hf

    _, ext_dir, models = setup
    resize_model_dir(models[False], ext_dir, "subword", tmp_path / "resized")
    model = MiniLlama.from_pretrained(tmp_path / "resized").eval()
    save_hf(model, tmp_path / "hf", Tokenizer.from_pretrained(ext_dir))
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.tensor([Tokenizer.from_pretrained(ext_dir).encode("Lily说：我想喝茶。")])
    assert ids.max() >= 512  # new tokens in the input
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)


def test_refusals_write_nothing(setup, small_corpus, tmp_path):
    old_dir, ext_dir, models = setup
    out = tmp_path / "out"
    with pytest.raises(MiniLlamaError, match="does not extend"):  # the old tokenizer itself
        resize_model_dir(models[True], old_dir, "mean", out)
    other = tmp_path / "other"  # an extension of another tokenizer: ids differ
    Tokenizer({i: b for i, b in enumerate(bytes([b]) for b in range(256))} | {256: b"zz", 257: b"qq", 258: b"xy"},
              [(b"z", b"z"), (b"q", b"q"), (b"x", b"y")]).save_pretrained(other)
    with pytest.raises(MiniLlamaError):
        resize_model_dir(models[True], other, "mean", out)
    with pytest.raises(MiniLlamaError, match="--init"):
        resize_model_dir(models[True], ext_dir, "zeros", out)
    assert not out.exists()


def test_resize_token_embeddings_in_memory():
    torch.manual_seed(0)
    model = MiniLlama(ModelConfig(vocab_size=300, **SHAPE))
    resize_token_embeddings(model, 310, "subword", spellings=[[1, 2]] * 10)
    assert model.model.embed_tokens.weight.shape == (310, 32) and model.config.vocab_size == 310
    assert model(torch.tensor([[305, 1]])).logits.shape == (1, 2, 310)
    with pytest.raises(ValueError):
        resize_token_embeddings(model, 300, "mean")
