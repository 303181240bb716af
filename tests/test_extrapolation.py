"""`minillama eval --context-lengths`: a checkpoint at several window lengths and RoPE scalings."""

import itertools
import json

import pytest
import torch

from minillama.cli import main
from minillama.files import read_manifest, verify_manifest
from minillama.model import MiniLlama, ModelConfig
from minillama.train.extrapolation import SCALINGS, Scaling, evaluate_extrapolation, parse_scaling

transformers = pytest.importorskip("transformers")
CONTEXT = 128  # the debug preset's max_position_embeddings
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def text(small_corpus, tmp_path_factory):
    """The corpus's first 40 stories (about 10k tokens): enough for a few long windows, quick to read whole."""
    stories = small_corpus[2].read_text(encoding="utf-8").split("<|endoftext|>")[:40]
    path = tmp_path_factory.mktemp("text") / "stories.txt"
    path.write_text("<|endoftext|>".join(stories) + "<|endoftext|>\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_corpus):
    """A random debug model (context 128) with the corpus's tokenizer, inside a run directory."""
    tokenizer_dir, _, _ = small_corpus
    run = tmp_path_factory.mktemp("run")
    (run / "metrics.jsonl").write_text("")  # what marks a training run's directory
    torch.manual_seed(0)
    model = MiniLlama(ModelConfig.from_preset("debug", vocab_size=512, eos_token_id=0, initializer_range=0.1))
    model.save_pretrained(run / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (run / "hf" / name).write_bytes((tokenizer_dir / name).read_bytes())
    return run / "hf"


def by_key(report):
    return {(r["length"], r["scaling"]): r for r in report["results"]}


def test_every_length_and_scaling_in_the_table_the_json_and_the_plot(checkpoint, text, tmp_path, capsys):
    out = tmp_path / "extrapolation"
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", text, "--context-lengths", "256,32,64",
                 "--max-windows", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "extrapolation.json").read_text())
    assert report["lengths"] == [32, 64, 256] and report["scalings"] == list(SCALINGS)
    assert report["trained_context"] == CONTEXT and report["tokens_read"] == 2 * 256 + 1
    assert "concatenated in order" in report["text"] and "concatenated in order" in printed
    results = by_key(report)
    assert set(results) == set(itertools.product([32, 64, 256], SCALINGS))
    for (length, _), result in results.items():
        assert len(result["per_position_loss"]) == length
        assert result["windows"] == 2 * 256 // length and result["predicted"] == 2 * 256
        assert result["loss"] == pytest.approx(sum(result["per_position_loss"]) / length, rel=1e-4)
        assert 0 < result["bits_per_byte"] < 10
    # the factor rule: length / context, at least 1
    assert [results[(n, "linear")]["factor"] for n in (32, 64, 256)] == [1.0, 1.0, 2.0]
    assert results[(256, "dynamic")]["factor"] == 2.0 and results[(256, "none")]["factor"] is None
    assert results[(256, "yarn")]["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0,
                                                      "original_max_position_embeddings": CONTEXT}
    assert results[(256, "llama3")]["rope_scaling"]["low_freq_factor"] == 1.0
    table = (out / "extrapolation.md").read_text()
    assert table in printed
    assert table.count("\n| ") == 4  # the header and three lengths
    assert "| 256 | 2 | " in table and "×2" in table
    assert (out / "extrapolation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_manifest(out)[0] == "length-extrapolation" and verify_manifest(out)
    # running it again replaces its own output
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", text, "--context-lengths", "64",
                 "--rope-scaling", "none", "--max-windows", "1", "--out", str(out)]) == 0
    assert json.loads((out / "extrapolation.json").read_text())["lengths"] == [64]


def test_without_out_it_writes_into_the_run_directory_only(checkpoint, text, capsys):
    run = checkpoint.parent
    before = {p: p.read_bytes() for p in checkpoint.iterdir()}
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", text, "--context-lengths", "64",
                 "--rope-scaling", "none,yarn:4", "--max-windows", "1"]) == 0
    assert {p.name for p in run.iterdir()} == {"hf", "metrics.jsonl", "extrapolation.json", "extrapolation.md",
                                               "extrapolation.png"}
    assert {p: p.read_bytes() for p in checkpoint.iterdir()} == before
    report = json.loads((run / "extrapolation.json").read_text())
    assert report["scalings"] == ["none", "yarn:4"] and by_key(report)[(64, "yarn:4")]["factor"] == 4.0


def test_none_within_the_context_equals_plain_eval(checkpoint, text):
    from minillama.train.evaluate import evaluate_checkpoint

    plain = evaluate_checkpoint(checkpoint, text, seq_len=64)
    report = evaluate_extrapolation(checkpoint, [64], ["none"], dataset=text, max_windows=None, progress=False)
    (result,) = report["results"]
    assert result["predicted"] == (plain["tokens"] - 1) // 64 * 64  # the same windows, all of them
    assert result["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(plain["bits_per_byte"], rel=1e-5)


def test_factor_one_is_rope_unscaled_and_larger_factors_are_not(checkpoint, text):
    scalings = ["none", "linear", "dynamic", "yarn", "llama3", "linear:1", "yarn:1", "llama3:1", "dynamic:1"]
    report = evaluate_extrapolation(checkpoint, [32, CONTEXT, 2 * CONTEXT], scalings, dataset=text,
                                    max_windows=2, progress=False)
    results = by_key(report)
    for length, label in itertools.product([32, CONTEXT, 2 * CONTEXT], scalings):
        position = torch.tensor(results[(length, label)]["per_position_loss"])
        expected = torch.tensor(results[(length, "none")]["per_position_loss"])
        if length <= CONTEXT or label in ("none", "linear:1", "yarn:1", "llama3:1"):
            torch.testing.assert_close(position, expected, atol=1e-4, rtol=0)
        else:  # beyond the context each scaling changes the angles: later positions' losses move
            assert (position[CONTEXT:] - expected[CONTEXT:]).abs().max() > 1e-3, label


@pytest.mark.parametrize("name", ["linear", "dynamic", "yarn", "llama3"])
def test_each_scaling_equals_transformers_with_that_rope_scaling(name, checkpoint, text, tmp_path):
    """The per-position loss of one window twice the context equals transformers' per-token loss
    for the same weights saved with the scaling in config.json."""
    length = 2 * CONTEXT
    report = evaluate_extrapolation(checkpoint, [length], [name], dataset=text, max_windows=1, progress=False)
    (result,) = report["results"]
    model = MiniLlama.from_pretrained(checkpoint)
    model.config.rope_scaling = Scaling(name).rope_scaling(length, CONTEXT)
    model.save_pretrained(tmp_path / "scaled")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "scaled", dtype=torch.float32).eval()
    from minillama.train.evaluate import load_text

    tokens = torch.from_numpy(load_text(model, checkpoint, text).tokens[: length + 1])
    with torch.no_grad():
        logits = reference(tokens[None, :-1]).logits[0]
    expected = torch.nn.functional.cross_entropy(logits.float(), tokens[1:], reduction="none")
    torch.testing.assert_close(torch.tensor(result["per_position_loss"], dtype=torch.float32), expected,
                               atol=1e-4, rtol=0)


def test_scaling_names_and_factors_parse_or_say_what_is_wrong():
    assert parse_scaling("yarn") == Scaling("yarn") and parse_scaling("yarn:16").factor == 16.0
    assert parse_scaling("linear:2.5").label == "linear:2.5"
    for bad, words in (("ntk", "unknown RoPE scaling 'ntk'"), ("yarn:0.5", "must be a number >= 1"),
                       ("yarn:x", "must be a number >= 1"), ("none:2", "none takes no factor"),
                       ("yarn:nan", "must be a number >= 1")):
        with pytest.raises(ValueError, match=words):
            parse_scaling(bad)


def test_a_model_that_already_scales_rope_is_refused(checkpoint, text, tmp_path):
    from minillama.errors import MiniLlamaError

    model = MiniLlama.from_pretrained(checkpoint)
    model.config.rope_scaling = {"rope_type": "linear", "factor": 2.0}
    model.save_pretrained(tmp_path / "scaled")
    with pytest.raises(MiniLlamaError, match="already scales RoPE"):
        evaluate_extrapolation(tmp_path / "scaled", [64], dataset=text, progress=False)
