"""The training configuration: TOML files, dotted overrides, validation, --help."""

import dataclasses
from pathlib import Path

import pytest

from minillama.cli import build_parser, main
from minillama.train.config import TrainConfig, config_from_args

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))


def parse(argv):
    args, unknown = build_parser().parse_known_args(["train", *argv])
    return config_from_args(args, unknown)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_build_their_model(path):
    config = parse(["--config", str(path)])
    model_config = config.model.build(vocab_size=config.data.vocab_size)
    assert model_config.vocab_size == 4096 and config.model.preset == path.stem


def test_the_tiny_config_is_the_pipelines_training():
    """configs/tiny.toml trains what `minillama pipeline` does: `minillama train`'s defaults with
    Muon at lr 3e-3 down to a tenth, compiled (the pipeline compiles where a C++ compiler exists)."""
    from minillama.pipeline import pipeline_defaults

    tiny = parse(["--config", str(Path(__file__).parents[1] / "configs" / "tiny.toml")])
    tiny.budget.max_minutes = None
    demo = pipeline_defaults()
    demo.run.compile = True
    assert tiny == demo
    plain = parse([])
    assert (plain.optim.optimizer, plain.optim.lr, plain.optim.min_lr_ratio, plain.run.compile) == \
        ("adamw", 2e-3, 0.3, False)
    plain.optim.optimizer, plain.optim.lr, plain.optim.min_lr_ratio, plain.run.compile = "muon", 3e-3, 0.1, True
    assert tiny == plain


def test_file_then_command_line_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[optim]\nlr = 1e-3\n[model]\npreset = "debug"\nhidden_size = 96\n')
    config = parse(["--config", str(toml), "--optim.lr", "5e-4", "--model.num_hidden_layers", "3",
                    "--run.compile", "true", "--budget.max_steps=7"])
    assert config.optim.lr == 5e-4 and config.run.compile is True and config.budget.max_steps == 7
    model = config.model.build()
    assert (model.hidden_size, model.num_hidden_layers) == (96, 3)


def test_defaults_train_the_tiny_preset_on_the_embedded_sample_for_5_minutes():
    config = parse([])
    assert config.model.preset == "tiny" and config.data.dataset == "tinystories-sample"
    assert config.budget.resolved().max_minutes == 5.0
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("argv, message", [
    (["--optim.lr", "fast"], "optim.lr expects float"),
    (["--data.seq_len", "0"], "data.seq_len must be positive"),
    (["--run.precision", "fp8"], "run.precision must be one of"),
    (["--model.hidden_sise", "8"], "unknown model setting 'hidden_sise'"),
    (["--optim.learning_rate", "1"], "unknown setting 'optim.learning_rate'"),
    (["--run.compile", "maybe"], "run.compile expects true or false"),
])
def test_bad_settings_are_one_line_errors(argv, message, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_missing_or_broken_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[optim\n")
    assert main(["train", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_help_lists_every_field_with_its_doc(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--optim.warmup_steps" in out and "linear warmup steps" in out and "--model.FIELD" in out


def test_every_pipeline_flag_reaches_the_config(monkeypatch):
    """Each `--section.key` the pipeline documents sets that setting, and --out / --minutes are its only
    spellings of run.out_dir and budget.max_minutes."""
    monkeypatch.setattr(TrainConfig, "validate", lambda self: None)  # one flag at a time, not a valid whole
    samples = {"INT": ("3", 3), "FLOAT": ("0.5", 0.5), "BOOL": ("true", True), "DICT": ('{"a": 1}', {"a": 1})}
    parser = build_parser()
    pipeline = parser._subparsers._group_actions[0].choices["pipeline"]
    flags = [a for a in pipeline._actions if "." in a.dest]
    assert len(flags) > 40
    for action in flags:
        section, _, key = action.dest.partition(".")
        text, value = samples.get(action.metavar, samples["FLOAT"] if action.type is float else (None, None))
        if text is None:  # a string: one of its choices, or any text
            fields = {f.name: f for f in dataclasses.fields(getattr(TrainConfig(), section))}
            choices = fields[key].metadata.get("choices") if key in fields else None
            text = value = choices[-1] if choices else "somewhere"
        args, unknown = parser.parse_known_args(["pipeline", action.option_strings[0], text])
        config = config_from_args(args, unknown)
        found = getattr(config, section).overrides.get(key) if section == "model" and key != "preset" else \
            getattr(getattr(config, section), key)
        assert found == value, action.option_strings
    assert {a.option_strings[0] for a in flags if a.dest in ("run.out_dir", "budget.max_minutes")} == \
        {"--out", "--minutes"}
    with pytest.raises(SystemExit):
        parser.parse_args(["pipeline", "--run.out_dir", "x"])


def test_a_vocab_size_override_pads_the_tokenizers_vocabulary_never_cuts_it():
    config = parse(["--model.preset", "debug", "--model.vocab_size", "320"])
    assert config.model.build(vocab_size=300, eos_token_id=0).vocab_size == 320  # padded, as asked
    assert parse(["--model.preset", "debug"]).model.build(vocab_size=300).vocab_size == 300
    with pytest.raises(ValueError, match="smaller than the tokenizer's 300 tokens"):
        parse(["--model.preset", "debug", "--model.vocab_size", "200"]).model.build(vocab_size=300)
