"""`minillama translate train|eval` and `minillama translate --checkpoint DIR [--text ...]`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from minillama.options import add_checkpoint_option, comma_separated, positive_int
from minillama.train.config import TrainConfig, add_config_arguments

DIRECTIONS = ("en-zh", "zh-en")
MODEL_OPTION = "seq2seq:"  # dest prefix of --model.FIELD (a Seq2SeqConfig field, not a ModelConfig one)


def translate_defaults() -> TrainConfig:
    config = TrainConfig()
    config.data.dataset, config.data.vocab_size, config.data.batch_size = "tatoeba-cmn", 4000, 64
    config.data.seq_len = 16  # read only by the MFU estimate: about a sentence's tokens
    # lr 1e-3 after 200 warmup steps: 16 minutes on one quiet thread reached validation loss 2.40 and
    # 31.3 BLEU (greedy), where lr 5e-4 had reached 4.38 after 1.5 minutes; the `small` shape at 7e-4 got
    # 3.60 and 14.2 BLEU in the same 16 minutes (3.3x slower steps)
    config.optim.lr, config.optim.warmup_steps, config.optim.beta2 = 1e-3, 200, 0.98
    config.optim.weight_decay, config.optim.min_lr_ratio, config.optim.label_smoothing = 0.01, 0.1, 0.1
    config.budget.max_minutes = 16.0  # the rest of a 20-minute run: tokenizer, test translations
    config.run.out_dir, config.run.eval_interval, config.run.eval_batches = "runs/translate", 250, 8
    config.run.checkpoint_interval, config.run.precision = 500, "float32"
    return config


def _direction(text: str) -> str:
    if text not in DIRECTIONS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(DIRECTIONS)}, got {text!r}")
    return text


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from minillama.seq2seq.config import PRESETS, Seq2SeqConfig
    from minillama.train.config import add_model_arguments

    add_model_arguments(parser, Seq2SeqConfig, PRESETS, MODEL_OPTION, title="[model]", default_preset="tiny",
                        preset_help="named shape (default: %(default)s)",
                        skip=("vocab_size", "decoder_vocab_size", "pad_token_id", "eos_token_id",
                              "decoder_start_token_id"))  # the tokenizer's


def register(subparsers: argparse._SubParsersAction) -> None:
    from minillama.model.config import ModelConfig

    translate = subparsers.add_parser(
        "translate", help="encoder–decoder translation (English <-> Chinese): train, eval, or translate text",
        description="Translate with a trained encoder–decoder: --text, or one sentence per line on stdin. "
                    "`translate train` trains one (default: English -> Chinese on the shipped Tatoeba pairs), "
                    "`translate eval` scores one (BLEU and chrF, greedy and beam search).")
    add_checkpoint_option(translate, "translation model", required=False)
    translate.add_argument("--text", action="append", help="a sentence to translate (repeatable; default: stdin, "
                                                           "one sentence per line)")
    translate.add_argument("--num-beams", type=positive_int, default=1, help="1: greedy (default), >1: beam search")
    translate.add_argument("--temperature", type=float, default=0.0, help="> 0: sample (with --num-beams 1)")
    translate.add_argument("--seed", type=int, help="seed for sampling")
    translate.add_argument("--truncate", action="store_true",
                           help="cut sentences longer than the model's positions instead of refusing them")
    translate.add_argument("--batch-size", type=positive_int, default=32)
    translate.add_argument("--device", default="auto")
    translate.set_defaults(func=run_translate)
    actions = translate.add_subparsers(dest="translate_command", metavar="ACTION")

    train = actions.add_parser(
        "train", help="train a translation model",
        description="Train the encoder–decoder (post-norm by default; --model.normalize_before true for pre-norm) "
                    "on the shipped Tatoeba English–Chinese pairs or a TSV of pairs, split by English sentence "
                    "(1,000 test, 500 validation). A joint byte-level BPE is trained on the training split unless "
                    "--data.tokenizer is given. Writes RUN/model (transformers-loadable) and RUN/report.json "
                    "(test BLEU / chrF, greedy and beam search).")
    train.add_argument("--direction", type=_direction, default="en-zh", help="en-zh (default) or zh-en")
    train.add_argument("--data", help="a TSV of pairs, 'english<TAB>chinese[<TAB>...]' per line (default: the "
                                      "shipped Tatoeba pairs)")
    train.add_argument("--eval-beams", type=comma_separated(positive_int), default=(1, 4),
                       help="decodings scored on the test split at the end (default: 1,4)")
    train.add_argument("--test-limit", type=positive_int, help="score only the first N test sentences")
    _add_model_options(train)
    excluded = ("model.preset", *(f"model.{f.name}" for f in dataclasses.fields(ModelConfig)),
                "data.dataset", "data.val_dataset", "data.prepared", "data.seq_len", "data.loader", "data.utf8_errors")
    add_config_arguments(train, translate_defaults(), exclude=excluded)
    train.set_defaults(func=run_train)

    evaluate = actions.add_parser(
        "eval", help="BLEU and chrF of a translation model, greedy and beam search side by side",
        description="Translate the test (or validation) split and score it with sacrebleu against every reference "
                    "of each sentence; Chinese targets use sacrebleu's zh tokenization.")
    add_checkpoint_option(evaluate, "translation model")
    evaluate.add_argument("--direction", type=_direction, help="default: the one the model was trained for")
    evaluate.add_argument("--data", help="a TSV of pairs (default: the model's, else the shipped Tatoeba pairs)")
    evaluate.add_argument("--split", default="test", choices=["test", "validation"])
    evaluate.add_argument("--num-beams", type=comma_separated(positive_int), default=(1, 4),
                          help="decodings to compare (default: 1,4)")
    evaluate.add_argument("--limit", type=positive_int, help="only the first N sentences")
    evaluate.add_argument("--batch-size", type=positive_int, default=64)
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from minillama.seq2seq.config import Seq2SeqConfig
    from minillama.seq2seq.train import TranslateSettings, train_translation
    from minillama.train.config import _convert, config_from_args, field_kinds
    from minillama.train.distributed import is_main_process

    config = config_from_args(args, defaults=translate_defaults())
    kinds = field_kinds(Seq2SeqConfig)
    overrides = {name[len(MODEL_OPTION):]: value for name, value in vars(args).items()
                 if name.startswith(MODEL_OPTION) and name != MODEL_OPTION + "preset"}
    overrides = {k: _convert(v, kinds[k], f"model.{k}") for k, v in overrides.items()}
    settings = TranslateSettings(args.direction, args.data, getattr(args, MODEL_OPTION + "preset"), overrides,
                                 tuple(args.eval_beams), args.test_limit)
    report = train_translation(config, settings)
    if is_main_process():
        print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def _load(checkpoint: str, device: str):
    from minillama.hardware import resolve_device
    from minillama.seq2seq.model import MiniSeq2Seq
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches
    from minillama.train.checkpoint import resolve_checkpoint

    directory = resolve_checkpoint(checkpoint)
    model = MiniSeq2Seq.from_pretrained(directory, device=resolve_device(device)).eval()
    tokenizer = Tokenizer.from_pretrained(directory)
    check_tokenizer_matches(tokenizer, model.config.vocab_size, directory)
    return directory, model, tokenizer


def run_translate(args: argparse.Namespace) -> int:
    from minillama.seq2seq.evaluate import translate

    if args.checkpoint is None:
        raise ValueError("--checkpoint is required to translate (or give an action: translate train, translate eval)")
    _, model, tokenizer = _load(args.checkpoint, args.device)
    settings = dict(num_beams=args.num_beams, truncate=args.truncate, temperature=args.temperature, seed=args.seed,
                    batch_size=args.batch_size)
    if args.text:
        for line in translate(model, tokenizer, args.text, **settings):
            print(line)
        return 0
    for line in sys.stdin:  # one at a time: answers come as lines arrive (a pipe, or a person typing)
        if line.strip():
            print(translate(model, tokenizer, [line.strip()], **settings)[0], flush=True)
        else:
            print(flush=True)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from minillama.seq2seq import data
    from minillama.seq2seq.evaluate import evaluate_translations
    from minillama.seq2seq.train import translation_settings

    directory, model, tokenizer = _load(args.checkpoint, args.device)
    trained = translation_settings(directory)
    direction = args.direction or trained.get("direction", "en-zh")
    source = args.data or (trained.get("data") if trained.get("data") not in (None, data.TATOEBA) else None)
    pairs = data.read_pairs(source) if source else data.tatoeba_pairs()
    split = data.split_pairs(pairs)[args.split]
    test = data.with_references(data.oriented(split, direction))
    report = evaluate_translations(model, tokenizer, test, direction.split("-")[1], args.num_beams, args.batch_size,
                                   args.limit)
    print(json.dumps({"model": str(directory), "direction": direction, "split": args.split, **report}, indent=2,
                     ensure_ascii=False))
    return 0
