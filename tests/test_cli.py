"""The command line: help, model inspection, export / import, eval and a pipeline smoke run."""

import json
import subprocess
import sys

import pytest
import torch

from minillama.cli import main
from minillama.model import MiniLlama, ModelConfig

transformers = pytest.importorskip("transformers")


def test_help_lists_the_pipeline_stages_without_importing_torch():
    done = subprocess.run([sys.executable, "-m", "minillama", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("pipeline", "tokenizer", "prepare", "train", "eval", "export", "import", "model"):
        assert f"\n    {command} " in done.stdout, command
    # `--help` must not import torch (the package keeps heavy imports inside commands): it stays fast
    probe = subprocess.run([sys.executable, "-c", "import sys, minillama.cli as c; c.build_parser(); "
                            "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert probe.stdout.strip() == "False", (probe.stdout, probe.stderr)


def test_model_info_and_presets(capsys):
    assert main(["model", "info", "--preset", "stories15M"]) == 0
    assert "15,191,712" in capsys.readouterr().out
    assert main(["model", "presets"]) == 0
    assert "tinyllm" in capsys.readouterr().out


@pytest.fixture
def checkpoint(tmp_path, small_corpus):
    tokenizer_dir, _, _ = small_corpus
    torch.manual_seed(0)
    model = MiniLlama(ModelConfig.from_preset("debug", vocab_size=512, eos_token_id=0, initializer_range=0.1))
    model.save_pretrained(tmp_path / "ckpt")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "ckpt" / name).write_bytes((tokenizer_dir / name).read_bytes())
    return model, tmp_path / "ckpt"


def test_export_then_transformers_loads_model_and_tokenizer(checkpoint, tmp_path, capsys):
    model, ckpt = checkpoint
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"] == 0


def test_import_a_transformers_directory(checkpoint, tmp_path):
    model, ckpt = checkpoint
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt)
    hf.save_pretrained(tmp_path / "theirs")
    assert main(["import", "--hf", str(tmp_path / "theirs"), "--out", str(tmp_path / "ours")]) == 0
    imported = MiniLlama.from_pretrained(tmp_path / "ours")
    assert all(torch.equal(imported.state_dict()[k], v) for k, v in model.state_dict().items())


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no config.json" in err and err.count("\n") == 1


def test_eval_reports_loss_perplexity_and_bits_per_byte(checkpoint, capsys, small_corpus):
    _, ckpt = checkpoint
    _, _, text = small_corpus
    assert main(["eval", "--checkpoint", str(ckpt), "--dataset", str(text), "--seq-len", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] > 1000 and report["perplexity"] == pytest.approx(2.718281828 ** report["loss"], rel=1e-6)
    # random weights over a 512-token vocabulary: about ln(512) nats per token
    assert 5.0 < report["loss"] < 7.5 and 0 < report["bits_per_byte"] < 5


def test_pipeline_smoke_run(tmp_path, capsys):
    """Every stage runs and the run directory has its documented layout (a few steps only)."""
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), "--minutes", "5", "--budget.max_steps", "3",
                 "--model.preset", "debug", "--data.vocab_size", "300", "--data.seq_len", "64",
                 "--data.batch_size", "4", "--max-new-tokens", "12", "--run.progress", "false",
                 "--run.compile", "false"]) == 0
    printed = capsys.readouterr().out
    assert "One day, Lily met a Shoggoth" in printed and "bits/byte" in printed
    for name in ("tokenizer/tokenizer.json", "data/meta.json", "checkpoints/latest", "metrics.jsonl",
                 "loss.png", "hf/model.safetensors", "hf/tokenizer.json", "report.json", "story.txt"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3 and report["bits_per_byte"] > 0 and 0 <= report["repeated_4grams"] <= 1
    transformers.AutoModelForCausalLM.from_pretrained(out / "hf")

    # a second run on the first one's tokenizer and token files (what experiments/demo_budget.py does),
    # with the demo's own settings: compiled (where a C++ compiler exists), Muon
    again = tmp_path / "again"
    assert main(["pipeline", "--out", str(again), "--budget.max_steps", "2", "--model.preset", "debug",
                 "--data.tokenizer", str(out / "tokenizer"), "--data.prepared", str(out / "data"),
                 "--data.seq_len", "64", "--max-new-tokens", "4", "--run.progress", "false"]) == 0
    assert not (again / "tokenizer").exists() and (again / "hf/tokenizer.json").exists()
    assert json.loads((again / "report.json").read_text())["steps"] == 2


def test_the_story_repetition_measure():
    from minillama.pipeline import repeated_ngram_share

    assert repeated_ngram_share("one two three four five six") == 0.0
    loop = "I am cold and cold. " * 4  # 20 words: 17 4-grams, of which only 5 are new
    assert repeated_ngram_share(loop) == pytest.approx(12 / 17)
    assert repeated_ngram_share("too short") == 0.0
