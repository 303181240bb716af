"""`minillama bert pretrain | fill-mask | eval`."""

from __future__ import annotations

import argparse
import dataclasses
import json

from minillama.bert.config import BERT_PRESETS, BertConfig
from minillama.model.config import ModelConfig
from minillama.options import add_checkpoint_option, positive_int
from minillama.train.config import (
    TrainConfig,
    _convert,
    add_config_arguments,
    add_model_arguments,
    field_kinds,
    load_toml,
    set_field,
)

MODEL_DEST = "bert_model__"  # argparse dests of --model.FIELD (no dot: TrainConfig does not read them)


def pretrain_defaults() -> TrainConfig:
    config = TrainConfig()
    config.data.seq_len, config.data.batch_size = 128, 32
    config.optim.lr, config.optim.warmup_steps, config.optim.weight_decay = 1e-3, 100, 0.01
    config.optim.min_lr_ratio = 0.1
    config.run.out_dir, config.run.eval_interval, config.run.checkpoint_interval = "runs/bert", 200, 500
    return config


def register(subparsers: argparse._SubParsersAction) -> None:
    bert = subparsers.add_parser(
        "bert", help="BERT, the encoder-only masked language model: pretrain, fill-mask, eval",
        description="An encoder-only Transformer (BERT) read in both directions and trained by masked language "
                    "modelling. Checkpoints are transformers BertForMaskedLM directories; fine-tune one for "
                    "sentiment with `minillama classify train --base DIR` (see docs/bert.md).")
    actions = bert.add_subparsers(dest="bert_command", metavar="ACTION", required=True)

    pretrain = actions.add_parser(
        "pretrain", help="MLM pretraining (default: bert mini on the embedded TinyStories)",
        description="Pretrain a BERT by masked language modelling: 15 %% of the tokens selected, of those 80 %% "
                    "[MASK], 10 %% random, 10 %% unchanged, new masks every epoch. Trains a BPE with BERT's special "
                    "tokens on the dataset unless --data.tokenizer is given; --data.dataset takes any corpus "
                    "`minillama prepare` accepts. Runs resume from the latest checkpoint in run.out_dir.")
    exclude = ("model.preset", *(f"model.{f.name}" for f in dataclasses.fields(ModelConfig)))
    add_config_arguments(pretrain, pretrain_defaults(), exclude=exclude)
    add_model_arguments(pretrain, BertConfig, BERT_PRESETS, MODEL_DEST, title="[model] (BERT)",
                        preset_help="BERT shape (Turc et al. 2019 names; default: mini)")
    pretrain.add_argument("--mlm-probability", type=float, default=0.15,
                          help="share of the tokens selected for the loss (BERT: 0.15; Wettig et al. 2023 found up "
                               "to 0.4 trains faster; validation always masks 0.15) (default: %(default)s)")
    pretrain.set_defaults(func=run_pretrain)

    fill = actions.add_parser("fill-mask", help="the most likely tokens for each [MASK] of a text",
                              description="Print the masked LM's top candidates for every [MASK] in --text.")
    add_checkpoint_option(fill, "BERT masked LM")
    fill.add_argument("--text", required=True, help='a text with [MASK], e.g. "Lily went to the [MASK]."')
    fill.add_argument("--top-k", type=positive_int, default=5, help="candidates per [MASK] (default: %(default)s)")
    fill.add_argument("--json", action="store_true", help="print the candidates as JSON")
    fill.add_argument("--device", default="auto")
    fill.set_defaults(func=run_fill_mask)

    evaluate = actions.add_parser("eval", help="masked-token accuracy and loss on a dataset's validation text",
                                  description="Mask the validation documents as in training (a fixed seed) and "
                                              "report how often the masked LM's top token is the original one.")
    add_checkpoint_option(evaluate, "BERT masked LM")
    evaluate.add_argument("--dataset", default="tinystories-sample", help="dataset name or path")
    evaluate.add_argument("--split", default="val", choices=["val", "train"])
    evaluate.add_argument("--seq-len", type=positive_int, default=128, help="tokens per window, [CLS] and [SEP] "
                                                                            "included (default: %(default)s)")
    evaluate.add_argument("--batch-size", type=positive_int, default=32)
    evaluate.add_argument("--max-batches", type=positive_int, help="evaluate only this many batches")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=run_eval)


def bert_settings(args: argparse.Namespace):
    """(TrainConfig, BertModelSettings): defaults, then --config FILE (its [model] is BERT's), then flags."""
    from minillama.bert.pretrain import BertModelSettings
    from minillama.train.config import config_from_args

    settings, defaults = BertModelSettings(), pretrain_defaults()
    file_model: dict = {}
    if getattr(args, "config", None):
        for section, values in load_toml(args.config).items():
            if not isinstance(values, dict):
                raise ValueError(f"{args.config}: top-level key {section!r} must be a [section]")
            for key, value in values.items():
                if section == "model":
                    file_model[key] = value
                else:
                    set_field(defaults, f"{section}.{key}", value)
        args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "config"})
    flags = {k.removeprefix(MODEL_DEST): v for k, v in vars(args).items() if k.startswith(MODEL_DEST)}
    kinds = field_kinds(BertConfig)
    for key, value in {**file_model, **flags}.items():
        if key == "preset":
            if value not in BERT_PRESETS:
                raise ValueError(f"model.preset must be one of {', '.join(BERT_PRESETS)}, got {value!r}")
            settings.preset = value
        elif key not in kinds:
            raise ValueError(f"unknown BERT model setting {key!r}; use a BertConfig field such as hidden_size")
        else:
            settings.overrides[key] = _convert(value, kinds[key], f"model.{key}")
    BertConfig.from_preset(settings.preset, **{"vocab_size": 2**20, **settings.overrides})  # refuse bad shapes now
    return config_from_args(args, defaults=defaults), settings


def run_pretrain(args: argparse.Namespace) -> int:
    from minillama.bert.pretrain import pretrain_bert
    from minillama.train.distributed import is_main_process

    config, settings = bert_settings(args)
    result = pretrain_bert(config, settings, args.mlm_probability)
    if not is_main_process():
        return 0
    status = "finished" if result.stopped_by == "budget" else "interrupted"
    loss = "" if result.val_loss is None else f", validation masked-token loss {result.val_loss:.4f}"
    print(f"{status} at step {result.step} ({result.tokens:,} tokens){loss}; checkpoint {result.checkpoint}")
    return 0


def run_fill_mask(args: argparse.Namespace) -> int:
    from minillama.bert.fill_mask import fill_mask
    from minillama.bert.pretrain import load_masked_lm
    from minillama.bert.tokenizer import MASK, load_bert_tokenizer
    from minillama.errors import MiniLlamaError
    from minillama.hardware import resolve_device
    from minillama.train.checkpoint import resolve_checkpoint

    if MASK not in args.text:  # before loading anything
        raise MiniLlamaError(f"--text has no {MASK} to fill: {args.text[:60]!r}; write {MASK} where a word is "
                             f"missing, e.g. --text \"Lily went to the {MASK}.\"")
    checkpoint = resolve_checkpoint(args.checkpoint)
    model = load_masked_lm(checkpoint, resolve_device(args.device))
    results = fill_mask(model, load_bert_tokenizer(checkpoint), args.text, args.top_k)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return 0
    for number, candidates in enumerate(results, 1):
        if len(results) > 1:
            print(f"[MASK] {number}:")
        for candidate in candidates:
            print(f"  {candidate['score']:.3f}  {candidate['token_str']!r:16}  {candidate['sequence']}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from minillama.bert.pretrain import evaluate_mlm

    report = evaluate_mlm(args.checkpoint, args.dataset, args.split, args.seq_len, args.batch_size, args.device,
                          args.max_batches)
    print(json.dumps(report, indent=2))
    return 0
