"""The training configuration: typed sections, a TOML file, dotted command-line overrides.

    minillama train --config configs/stories15M.toml --optim.lr 5e-4 --model.num_hidden_layers 8

Every field's `help` metadata becomes its `--help` text. The `[model]` section takes a `preset`
plus any `ModelConfig` field as an override (`--model.FIELD`, each listed by `--help`).

Why not jsonargparse or tyro: the whole parser is the few functions below (dotted names, a TOML
file, typed conversion, one-line errors); a library would add a dependency and its own error
format for no feature the CLI uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minillama.model.config import PRESETS, ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    factory = kwargs.pop("default_factory", None)
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class ModelSection:
    preset: str = _f("tiny", "named shape (see `minillama model presets`)", choices=tuple(PRESETS))
    overrides: dict[str, Any] = _f(None, "ModelConfig fields to change, e.g. --model.hidden_size 512",
                                   default_factory=dict)

    def build(self, vocab_size: int | None = None, **token_ids: int | None) -> ModelConfig:
        """The ModelConfig: the preset, then the tokenizer's vocabulary and special token ids, then
        the overrides. A `vocab_size` override may pad the tokenizer's vocabulary, never cut it."""
        tokenizer = {k: v for k, v in token_ids.items() if v is not None}
        if vocab_size is not None:
            tokenizer["vocab_size"] = vocab_size
            wanted = self.overrides.get("vocab_size")
            if wanted is not None and wanted < vocab_size:
                raise ValueError(f"model.vocab_size {wanted} is smaller than the tokenizer's {vocab_size} tokens; "
                                 f"leave model.vocab_size out (or at least {vocab_size})")
        return ModelConfig.from_preset(self.preset, **{**tokenizer, **self.overrides})


@dataclass
class DataSection:
    dataset: str = _f("tinystories-sample", "dataset name or path (.txt, .txt.gz, .jsonl, .parquet), or a "
                                            "weighted mixture: NAME:WEIGHT,NAME:WEIGHT,...")
    val_dataset: str | None = _f(None, "separate validation dataset (default: the dataset's own or a split)")
    tokenizer: str | None = _f(None, "tokenizer directory (default: OUT/tokenizer, trained if missing)")
    vocab_size: int = _f(4096, "vocabulary size when a tokenizer has to be trained")
    prepared: str | None = _f(None, "prepared token files directory (default: OUT/data, prepared if missing)")
    seq_len: int = _f(256, "tokens per training window (context length)")
    batch_size: int = _f(4, "windows per micro-batch (per process)")
    loader: str = _f("random", "random: random windows; sequential: epochs in file order",
                     choices=("random", "sequential"))
    utf8_errors: str = _f("strict", "text that is not valid UTF-8 (or a JSON lone surrogate): strict stops with "
                                    "the file and line; replace reads it as U+FFFD", choices=("strict", "replace"))


@dataclass
class OptimSection:
    optimizer: str = _f("adamw", "adamw; or muon: Muon (orthogonalised momentum) for the blocks' weight matrices, "
                                 "AdamW for embeddings, head and norms", choices=("adamw", "muon"))
    lr: float = _f(2e-3, "peak learning rate (Muon's updates are scaled to AdamW's size, so one lr serves both)")
    schedule: str = _f("cosine", "cosine: warmup, then cosine decay to min_lr_ratio x lr; wsd: warmup, stable at lr, "
                                 "then linear decay over the last decay_fraction of the steps",
                       choices=("cosine", "wsd"))
    min_lr_ratio: float = _f(0.3, "final learning rate as a fraction of lr")
    decay_fraction: float = _f(0.2, "wsd: the share of the steps spent decaying")
    warmup_steps: int = _f(30, "linear warmup steps")
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay (not applied to norms and biases)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.99, "AdamW beta2 (0.99 suits small, noisy batches; 0.95 large ones)")
    eps: float = _f(1e-8, "AdamW epsilon")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0: off)")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy loss")
    trainable: str = _f("all", "all parameters; or new-embeddings: only the embedding (and LM head) rows of tokens "
                               "added by `minillama model resize-vocab` (run.init_from such a model; weight decay "
                               "is off so every other weight stays exactly as it was)",
                        choices=("all", "new-embeddings"))


@dataclass
class BudgetSection:
    max_steps: int | None = _f(None, "stop after this many optimizer steps")
    max_tokens: int | None = _f(None, "stop after this many training tokens")
    max_minutes: float | None = _f(None, "stop after this many minutes of training time "
                                         "(5 when no budget is given)")
    schedule_steps: int | None = _f(None, "length of the LR schedule (default: from the budget); set it to "
                                          "train a fixed schedule in several sittings")

    def resolved(self) -> BudgetSection:
        """With no budget at all, train for 5 minutes."""
        if self.max_steps or self.max_tokens or self.max_minutes:
            return self
        return dataclasses.replace(self, max_minutes=5.0)


# How the model is spread over processes (docs/training.md "ZeRO stages"); fsdp is the old name of zero3.
PARALLEL_ALIASES = {"fsdp": "zero3"}
PARALLEL_CHOICES = ("ddp", "zero1", "zero2", "zero3", *PARALLEL_ALIASES)


@dataclass
class RunSection:
    out_dir: str = _f("runs/tiny", "run directory: checkpoints, metrics, curves, tokenizer, data")
    seed: int = _f(1337, "seed for initialisation and data order")
    device: str = _f("auto", "auto, cpu, cuda, cuda:1, mps")
    precision: str = _f("auto", "auto, float32, bfloat16, float16 (autocast; weights stay float32)",
                        choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool = _f(False, "torch.compile the model")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    threads: int | None = _f(None, "CPU threads (default: cores / processes)")
    parallel: str = _f("ddp", "under torchrun: ddp (replicate everything); ZeRO stage zero1 (shard the optimizer "
                              "state), zero2 (+ gradients) or zero3 (+ parameters); fsdp = zero3",
                       choices=PARALLEL_CHOICES)
    eval_interval: int = _f(100, "evaluate every this many steps (and at the end)")
    eval_batches: int = _f(20, "validation batches per periodic evaluation")
    log_interval: int = _f(10, "write metrics every this many steps")
    checkpoint_interval: int = _f(200, "save a checkpoint every this many steps (and at the end)")
    keep_last: int = _f(2, "checkpoints to keep (the best one is kept as well)")
    resume: str = _f("auto", "auto: continue from OUT's latest checkpoint; never; or a checkpoint path")
    init_from: str | None = _f(None, "start from this model's weights (continued pretraining: its shape and "
                                     "tokenizer are used; the step count starts at 0)")
    qat: str | None = _f(None, "quantization-aware training: the forward pass uses the weights rounded to "
                               "int8 or int4 (straight-through gradients); then `minillama quantize` the result",
                         choices=(None, "int8", "int4"))
    qat_group_size: int = _f(32, "run.qat int4: input features per scale and zero point (32, 64 or 128)")
    keep_sparsity: bool = _f(False, "keep the zeros of the blocks' weights at zero (fine-tuning a model "
                                    "`minillama prune` made; adamw only)")
    on_nonfinite: str = _f("stop", "a NaN/inf loss or gradient: stop, or skip the batch",
                           choices=("stop", "skip"))
    max_skips: int = _f(5, "with on_nonfinite=skip: stop after this many skipped batches")
    plot: bool = _f(True, "refresh OUT/loss.png at each evaluation")
    tensorboard: bool = _f(False, "also log to TensorBoard (if installed)")
    wandb: bool = _f(False, "also log to Weights & Biases (if installed)")
    progress: bool = _f(True, "show a progress bar")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        config = cls()
        for section, values in data.items():
            for key, value in (values or {}).items():
                set_field(config, f"{section}.{key}", value)
        config.validate()
        return config

    def validate(self) -> None:
        """Check every setting, the model's shape included, before any data or tokenizer work."""
        positive = {"data.seq_len": self.data.seq_len, "data.batch_size": self.data.batch_size,
                    "optim.grad_accum": self.optim.grad_accum, "run.eval_interval": self.run.eval_interval,
                    "run.log_interval": self.run.log_interval, "run.keep_last": self.run.keep_last,
                    "run.checkpoint_interval": self.run.checkpoint_interval}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.optim.lr <= 0 or not 0 <= self.optim.min_lr_ratio <= 1:
            raise ValueError("optim.lr must be positive and optim.min_lr_ratio within [0, 1]")
        if not 0 < self.optim.decay_fraction <= 1:
            raise ValueError(f"optim.decay_fraction must be in (0, 1], got {self.optim.decay_fraction}")
        if self.run.parallel not in PARALLEL_CHOICES:
            raise ValueError(f"run.parallel must be one of {', '.join(PARALLEL_CHOICES)}, got {self.run.parallel!r}")
        self.run.parallel = PARALLEL_ALIASES.get(self.run.parallel, self.run.parallel)
        if self.optim.optimizer == "muon" and self.run.parallel in ("zero2", "zero3"):
            raise ValueError(f"optim.optimizer muon needs whole matrices, which run.parallel {self.run.parallel} "
                             "shards (FSDP): use run.parallel ddp or zero1")
        if self.run.keep_sparsity and self.optim.optimizer != "adamw":
            raise ValueError("run.keep_sparsity keeps zeros by masking gradients, which holds under adamw only; "
                             "use optim.optimizer adamw")
        if self.optim.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.optim.warmup_steps}")
        if not 0 <= self.optim.label_smoothing < 1:
            raise ValueError(f"optim.label_smoothing must be in [0, 1), got {self.optim.label_smoothing}")
        for name in ("max_steps", "max_tokens", "max_minutes", "schedule_steps"):
            value = getattr(self.budget, name)
            if value is not None and value <= 0:
                raise ValueError(f"budget.{name} must be positive, got {value}")
        for logger in ("tensorboard", "wandb"):
            if getattr(self.run, logger) and importlib.util.find_spec(logger) is None:
                raise ValueError(f"run.{logger} is on but {logger} is not installed: pip install {logger}")
        # The shape (its vocabulary comes from the tokenizer later; any size passes here).
        vocab = self.model.overrides.get("vocab_size") or 2**31 - 1
        try:
            ModelConfig.from_preset(self.model.preset, **{**self.model.overrides, "vocab_size": vocab})
        except ValueError as exc:
            raise ValueError(f"model: {exc}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None


# ---- dotted names -> typed values -----------------------------------------------------------
def field_kinds(cls: type) -> dict[str, type]:
    """Field name -> its plain type (`int | None` -> int, `dict[str, Any]` -> dict)."""
    kinds = {}
    for name, hint in typing.get_type_hints(cls).items():
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        kinds[name] = typing.get_origin(hint) or hint
    return kinds


def _convert(value: Any, kind: type, name: str) -> Any:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} expects true or false, got {value!r}")
    if kind in (int, float, str):
        try:
            converted = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} expects {kind.__name__}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != converted:
            raise ValueError(f"{name} expects an integer, got {value!r}")
        return converted
    if kind is dict and isinstance(value, str):
        import json

        return json.loads(value)
    return value


def set_field(config: TrainConfig, dotted: str, value: Any) -> None:
    """config.<section>.<key> = value, converted to the field's type; model.<key> for ModelConfig."""
    section_name, _, key = dotted.partition(".")
    section = getattr(config, section_name, None)
    if section is None or not key:
        raise ValueError(f"unknown setting {dotted!r}; sections are model, data, optim, budget, run")
    if section_name == "model" and key not in ("preset", "overrides"):
        kinds = field_kinds(ModelConfig)
        if key not in kinds:
            raise ValueError(f"unknown model setting {key!r}; use a ModelConfig field such as hidden_size")
        section.overrides[key] = _convert(value, kinds[key], dotted)
        return
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        raise ValueError(f"unknown setting {dotted!r}; {section_name} has {', '.join(fields)}")
    if key == "overrides":
        section.overrides.update(value)
        return
    converted = _convert(value, field_kinds(type(section))[key], dotted)
    choices = fields[key].metadata.get("choices")
    if choices and converted not in choices:
        raise ValueError(f"{dotted} must be one of {', '.join(choices)}, got {converted!r}")
    setattr(section, key, converted)


def add_config_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None,
                         exclude: tuple[str, ...] = ()) -> None:
    """One `--section.key` option per field (and `--model.FIELD` per ModelConfig field), its help
    from the field's metadata; `exclude` leaves out settings the command spells its own way."""
    defaults = defaults or TrainConfig()
    parser.usage = f"{parser.prog} [options] [--config FILE] [--SECTION.KEY VALUE ...]"
    parser.add_argument("--config", help="a TOML file with [model] [data] [optim] [budget] [run] sections")
    for section in dataclasses.fields(defaults):
        values = getattr(defaults, section.name)
        fields = [f for f in dataclasses.fields(values) if f.name != "overrides"]
        kinds = field_kinds(type(values))
        if section.name == "model":  # the preset, then every ModelConfig field
            fields += dataclasses.fields(ModelConfig)
            kinds |= field_kinds(ModelConfig)
        fields = [f for f in fields if f"{section.name}.{f.name}" not in exclude]
        if not fields:  # a section the command spells its own way
            continue
        description = "the preset, then any ModelConfig field as --model.FIELD" if section.name == "model" else None
        group = parser.add_argument_group(f"[{section.name}]", description)
        for f in fields:
            name = f"{section.name}.{f.name}"
            default = getattr(values, f.name, None)
            shown = "from the preset" if section.name == "model" and f.name != "preset" else default
            group.add_argument(f"--{name}", dest=name, default=argparse.SUPPRESS,
                               metavar=kinds[f.name].__name__.upper(),
                               help=f"{f.metadata['help']} (default: {shown})")


def add_model_arguments(parser: argparse.ArgumentParser, config_cls: type, presets: Any, dest: str, *,
                        title: str, preset_help: str, default_preset: str | None = None,
                        skip: tuple[str, ...] = ()) -> None:
    """--model.preset and --model.FIELD for each field of another family's config dataclass (not
    ModelConfig), stored under `dest + name`: no dot, so TrainConfig never reads them."""
    group = parser.add_argument_group(title, f"a preset, then any {config_cls.__name__} field as --model.FIELD")
    group.add_argument("--model.preset", dest=dest + "preset", choices=tuple(presets), help=preset_help,
                       default=argparse.SUPPRESS if default_preset is None else default_preset)
    kinds = field_kinds(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name not in skip:
            group.add_argument(f"--model.{f.name}", dest=dest + f.name, default=argparse.SUPPRESS,
                               metavar=kinds[f.name].__name__.upper(),
                               help=f"{f.metadata['help']} (default: from the preset)")


def explain_unknown(options: list[str]) -> str | None:
    """Why the first unknown `--section.key` option is unknown (e.g. a misspelt model field)."""
    for option in options:
        if option.startswith("--") and "." in option:
            try:
                set_field(TrainConfig(), option[2:].partition("=")[0], None)
            except ValueError as exc:
                return str(exc)
    return None


def config_from_args(args: argparse.Namespace, unknown: list[str] | None = None,
                     defaults: TrainConfig | None = None) -> TrainConfig:
    """Defaults, then the TOML file, then command-line overrides (`--section.key` values in `args`,
    or left over in `unknown` as `--section.key value` pairs)."""
    config = TrainConfig.from_dict(dataclasses.asdict(defaults)) if defaults else TrainConfig()
    if getattr(args, "config", None):
        for section, values in load_toml(args.config).items():
            if not isinstance(values, dict):
                raise ValueError(f"{args.config}: top-level key {section!r} must be a [section]")
            for key, value in values.items():
                set_field(config, f"{section}.{key}", value)
    for name, value in vars(args).items():
        if "." in name:
            set_field(config, name, value)
    unknown = list(unknown or [])
    while unknown:
        option = unknown.pop(0)
        if not option.startswith("--") or "." not in option:
            raise ValueError(f"unrecognised argument {option!r}; see --help")
        name, eq, value = option[2:].partition("=")
        if not eq:
            if not unknown:
                raise ValueError(f"{option} needs a value")
            value = unknown.pop(0)
        set_field(config, name, value)
    config.validate()
    return config
