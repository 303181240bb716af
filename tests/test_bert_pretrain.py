"""`minillama bert pretrain | fill-mask | eval` through the one Trainer: a run trains and writes
transformers-loadable checkpoints, resumes exactly, stops on a time budget; bad input is one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from minillama.cli import main

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pretrain(out, text, *extra):
    return main(["bert", "pretrain", "--run.out_dir", str(out), "--data.dataset", str(text),
                 "--data.vocab_size", "400", "--model.preset", "tiny", "--model.hidden_size", "64",
                 "--data.seq_len", "48", "--data.batch_size", "4", "--run.threads", "1", "--run.progress", "false",
                 "--run.plot", "false", "--run.eval_batches", "2", "--run.eval_interval", "5", *extra])


@pytest.fixture(scope="module")
def run(small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bert") / "run"
    threads = torch.get_num_threads()
    try:
        assert pretrain(out, small_corpus[2], "--budget.max_steps", "12") == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_checkpoints_are_transformers_masked_lms(run):
    step = run / "checkpoints" / "step-000012"
    model = transformers.AutoModelForMaskedLM.from_pretrained(step)
    assert type(model).__name__ == "BertForMaskedLM"
    tokenizer = transformers.AutoTokenizer.from_pretrained(step)
    assert tokenizer("Lily went home.")["input_ids"][0] == tokenizer.cls_token_id
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in line for line in lines) and any("tokens_per_s" in line for line in lines)


def test_resume_is_exact(small_corpus, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    schedule = ("--budget.schedule_steps", "10", "--run.checkpoint_interval", "5")
    assert pretrain(straight, small_corpus[2], "--budget.max_steps", "10", *schedule) == 0
    assert pretrain(split, small_corpus[2], "--budget.max_steps", "5", *schedule) == 0
    assert pretrain(split, small_corpus[2], "--budget.max_steps", "10", *schedule) == 0
    a = load_file(straight / "checkpoints" / "step-000010" / "model.safetensors")
    b = load_file(split / "checkpoints" / "step-000010" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_the_run(small_corpus, tmp_path, capsys):
    assert pretrain(tmp_path / "timed", small_corpus[2], "--budget.max_minutes", "0.02") == 0
    assert "finished at step" in capsys.readouterr().out


def test_fill_mask_and_eval(run, small_corpus, capsys):
    assert main(["bert", "fill-mask", "--checkpoint", str(run), "--text", "Lily went to the [MASK].", "--json",
                 "--top-k", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 1 and len(results[0]) == 3
    assert results[0][0]["score"] >= results[0][1]["score"] >= results[0][2]["score"]
    assert main(["bert", "eval", "--checkpoint", str(run), "--dataset", str(small_corpus[2]), "--seq-len", "48",
                 "--max-batches", "2", "--batch-size", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 <= report["accuracy"] <= 1 and report["masked_tokens"] > 0


def test_model_settings_are_bert_fields(small_corpus, tmp_path, capsys):
    assert main(["bert", "pretrain", "--run.out_dir", str(tmp_path / "x"), "--model.hidden_sise", "8"]) == 2
    assert "hidden_sise" in capsys.readouterr().err
    assert main(["bert", "pretrain", "--run.out_dir", str(tmp_path / "x"), "--model.preset", "huge"]) == 2
    assert main(["bert", "pretrain", "--run.out_dir", str(tmp_path / "x"), "--model.num_attention_heads",
                 "3"]) == 2
    assert "multiple" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_and_import_cli_round_trip_bitwise(run, tmp_path):
    step = run / "checkpoints" / "step-000012"
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")("a", "b")["token_type_ids"] == [0, 0, 0, 1, 1]
    assert main(["import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    original = load_file(step / "model.safetensors")
    for directory in (tmp_path / "hf", tmp_path / "back"):
        copy = load_file(directory / "model.safetensors")
        assert copy.keys() == original.keys() and all(torch.equal(copy[k], original[k]) for k in original)


def test_windows_longer_than_the_model_are_refused_before_any_work(tmp_path, capsys):
    assert main(["bert", "pretrain", "--run.out_dir", str(tmp_path / "x"), "--data.seq_len", "600"]) == 2
    assert "data.seq_len 600 must be from 3 to the model's max_position_embeddings 512" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_continued_pretraining_starts_from_the_model_and_its_tokenizer(run, small_corpus, tmp_path):
    """run.init_from: the weights are the model's (one step at a negligible lr changes nothing visible,
    while a fresh model differs everywhere) and its tokenizer is used, not a new one trained."""
    start = run / "checkpoints" / "step-000012"
    out = tmp_path / "continued"
    assert pretrain(out, small_corpus[2], "--run.init_from", str(start), "--budget.max_steps", "1",
                    "--optim.lr", "1e-9", "--optim.warmup_steps", "0", "--run.seed", "7") == 0
    before = load_file(start / "model.safetensors")
    after = load_file(out / "checkpoints" / "step-000001" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert not (out / "tokenizer").exists()
    assert (out / "checkpoints/step-000001/tokenizer.json").read_bytes() == (start / "tokenizer.json").read_bytes()
