"""`minillama.numpy_model` must work where torch cannot be imported: a child process blocks torch
with a meta-path finder, then loads a checkpoint, runs the model, samples and streams text."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from minillama.model import MiniLlama, ModelConfig

CHILD = r"""
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, BlockTorch())
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch was importable")

import numpy as np
import minillama.numpy_model as numpy_model

checkpoint, logits_path, has_tokenizer = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
model = numpy_model.NumpyLlama.from_pretrained(checkpoint)
np.save(logits_path, model.forward([[1, 2, 3, 4]]))
print(model.generate([1, 2, 3], 8, temperature=0.8, top_k=20, seed=0))
if has_tokenizer:  # the project's tokenizer, loaded from the checkpoint directory
    print(repr("".join(numpy_model.stream_text(checkpoint, "Once upon", max_new_tokens=8, seed=0))))
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "transformers"))
print("loaded:", loaded)
assert not loaded
"""


def _project_tokenizer(tmp_path):
    """A tiny trained project tokenizer, or None while `minillama.tokenizer` does not exist."""
    try:
        from minillama.tokenizer import Tokenizer, train_bpe
    except ImportError:
        return None
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Once upon a time there was a little cat.\n" * 50, encoding="utf-8")
    return Tokenizer(*train_bpe(str(corpus), 280, ["<|endoftext|>"]), ["<|endoftext|>"])


def test_numpy_model_imports_and_runs_without_torch(tmp_path):
    tokenizer = _project_tokenizer(tmp_path)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size if tokenizer else 256, hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64)
    model = MiniLlama(config).eval()
    model.save_pretrained(tmp_path / "ckpt")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp_path / "ckpt")
    command = [sys.executable, "-c", CHILD, str(tmp_path / "ckpt"), str(tmp_path / "logits.npy"),
               "1" if tokenizer else "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    with torch.no_grad():
        expected = model(torch.tensor([[1, 2, 3, 4]])).logits.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=0, atol=1e-4)
    assert "loaded: []" in result.stdout
