"""`minillama translate train|eval` and `minillama translate` end to end on a slice of the Tatoeba
pairs: the run directory, exact resume through the one Trainer, and an export that transformers'
Auto classes load with no extra code."""

import io
import json

import pytest
import torch
from safetensors.torch import load_file

from minillama.cli import main
from minillama.seq2seq import data

transformers = pytest.importorskip("transformers")

TRAIN = ["--model.preset", "debug", "--data.vocab_size", "300", "--data.batch_size", "16", "--run.threads", "1",
         "--run.progress", "false", "--run.plot", "false", "--run.eval_interval", "3", "--run.eval_batches", "2",
         "--test-limit", "8", "--eval-beams", "1,2"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    path.write_text("".join(f"{p.en}\t{p.zh}\t{p.attribution}\n" for p in data.tatoeba_pairs()[::10]),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(pairs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("translate") / "run"
    threads = torch.get_num_threads()
    try:
        assert main(["translate", "train", "--data", str(pairs_file), "--run.out_dir", str(out),
                     "--budget.max_steps", "6", *TRAIN]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_a_run_writes_model_report_and_checkpoints(run):
    report = json.loads((run / "report.json").read_text())
    assert set(report["test"]) >= {"greedy", "beam2", "sentences"} and report["test"]["sentences"] == 8
    assert "tok:zh" in report["test"]["greedy"]["bleu_signature"]  # Chinese targets: sacrebleu's zh tokenization
    assert set(report["bytes_per_token"]) == {"en", "zh"}
    assert json.loads((run / "model" / "translation.json").read_text())["direction"] == "en-zh"
    assert (run / "checkpoints" / "step-000006" / "model.safetensors").is_file()


def test_the_export_loads_with_auto_classes_and_translates_alike(run):
    from minillama.seq2seq.decode import generate_ids
    from minillama.seq2seq.model import MiniSeq2Seq
    from minillama.tokenizer import Tokenizer

    model_dir = run / "model"
    reference = transformers.AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    ours, tokenizer = MiniSeq2Seq.from_pretrained(model_dir).eval(), Tokenizer.from_pretrained(model_dir)
    sentences = ["Hi.", "Tom is reading a book."]
    batch = their_tokenizer(sentences, return_tensors="pt", padding=True)
    input_ids, mask = data.pad_sources(tokenizer.encode_batch(sentences), tokenizer.pad_token_id)
    assert torch.equal(batch["input_ids"], input_ids) and torch.equal(batch["attention_mask"], mask)
    for beams in (1, 2):
        expected = reference.generate(**batch, num_beams=beams, do_sample=False, max_new_tokens=12)
        if beams == 1:
            got = generate_ids(ours, input_ids, mask, max_new_tokens=12)
            assert got.tolist() == expected.tolist()
        texts = their_tokenizer.batch_decode(expected, skip_special_tokens=True)
        assert all(isinstance(t, str) for t in texts)


def test_resume_continues_exactly(pairs_file, tmp_path, run):
    args = ["translate", "train", "--data", str(pairs_file), "--data.tokenizer", str(run / "tokenizer"),
            "--budget.schedule_steps", "6", "--eval-beams", "1", *TRAIN]
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--run.out_dir", str(tmp_path / "straight"), "--budget.max_steps", "6"]) == 0
        assert main([*args, "--run.out_dir", str(tmp_path / "halves"), "--budget.max_steps", "3"]) == 0
        assert main([*args, "--run.out_dir", str(tmp_path / "halves"), "--budget.max_steps", "6"]) == 0
    finally:
        torch.set_num_threads(threads)
    straight = load_file(tmp_path / "straight" / "checkpoints" / "step-000006" / "model.safetensors")
    halves = load_file(tmp_path / "halves" / "checkpoints" / "step-000006" / "model.safetensors")
    assert straight.keys() == halves.keys() and all(torch.equal(straight[k], halves[k]) for k in straight)


def test_translate_text_and_stdin(run, capsys, monkeypatch):
    assert main(["translate", "--checkpoint", str(run / "model"), "--text", "Hi.", "--text", "Go away.",
                 "--num-beams", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi.\n\nI like tea.\n"))
    assert main(["translate", "--checkpoint", str(run)]) == 0  # a run directory: its latest checkpoint
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_translate_eval_scores_greedy_and_beam_side_by_side(run, capsys):
    assert main(["translate", "eval", "--checkpoint", str(run), "--limit", "6", "--num-beams", "1,3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["direction"] == "en-zh" and report["sentences"] == 6
    assert {"bleu", "chrf"} <= set(report["greedy"]) and {"bleu", "chrf"} <= set(report["beam3"])
