"""`minillama quantize` end to end: each method writes a directory that sample, eval and serve's
loader read back through `MiniLlama.from_pretrained`, with the logits of the in-memory model."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_model

from minillama.cli import main
from minillama.model import MiniLlama
from minillama.quant.linear import QuantLinear
from minillama.quant.model import quantize_model
from minillama.tokenizer import Tokenizer

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def float_model(small_corpus, tmp_path_factory):
    directory = tmp_path_factory.mktemp("quant") / "float"
    random_model({**SHAPE, "vocab_size": 512}, seed=0).save_pretrained(directory)
    Tokenizer.from_pretrained(small_corpus[0]).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("method", ["int8", "int4", "gptq-int4"])
def test_quantize_sample_and_eval(method, float_model, small_corpus, tmp_path, capsys, single_thread):
    out = tmp_path / method
    extra = ["--calibration", str(small_corpus[1]), "--calibration-sequences", "8", "--calibration-len", "64"]
    assert main(["quantize", "--checkpoint", str(float_model), "--method", method, "--out", str(out), *extra]) == 0
    assert "quantized 14 Linear layers" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["method"] == method and config["bits"] == (8 if method == "int8" else 4)
    assert (out / "tokenizer.json").is_file()
    assert (out / "model.safetensors").stat().st_size < (float_model / "model.safetensors").stat().st_size

    assert main(["sample", "--checkpoint", str(out), "--prompt", "Once", "--max-new-tokens", "4",
                 "--temperature", "0"]) == 0
    capsys.readouterr()
    text = tmp_path / "stories.txt"
    text.write_text(small_corpus[2].read_text(encoding="utf-8")[:4000], encoding="utf-8")
    assert main(["eval", "--checkpoint", str(out), "--dataset", str(text), "--seq-len", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bits_per_byte"] > 0

    if method == "int4":  # the directory holds exactly the in-memory quantized model
        expected = MiniLlama.from_pretrained(float_model).eval()
        quantize_model(expected, "int4", group_size=32)
        loaded = MiniLlama.from_pretrained(out).eval()
        assert isinstance(loaded.model.layers[0].self_attn.q_proj, QuantLinear)
        ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(loaded(ids).logits, expected(ids).logits, rtol=0, atol=0)


def test_serve_loads_a_quantized_directory(float_model, tmp_path, monkeypatch, capsys):
    """`minillama serve` on a quantized directory answers a completion (uvicorn replaced by a test client)."""
    pytest.importorskip("fastapi")
    import uvicorn
    from fastapi.testclient import TestClient

    assert main(["quantize", "--checkpoint", str(float_model), "--method", "int4", "--out", str(tmp_path / "q")]) == 0
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    assert main(["serve", "--checkpoint", str(tmp_path / "q"), "--threads", "1"]) == 0
    with TestClient(apps[0]) as client:
        response = client.post("/v1/completions", json={"model": "q", "prompt": "Once", "max_tokens": 3,
                                                        "temperature": 0})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1
