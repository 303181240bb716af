"""`minillama sft`, `minillama merge-lora` and `minillama classify train|eval`."""

from __future__ import annotations

import argparse
import json

from minillama.options import add_checkpoint_option, add_output_option, positive_int
from minillama.train.checkpoint import resolve_checkpoint
from minillama.train.config import TrainConfig, add_config_arguments


def sft_defaults() -> TrainConfig:
    config = TrainConfig()
    config.data.dataset, config.data.batch_size = "tinystories-instruct", 16
    config.optim.lr, config.optim.warmup_steps, config.optim.weight_decay = 5e-4, 20, 0.0
    config.run.out_dir, config.run.eval_interval, config.run.checkpoint_interval = "runs/sft", 100, 250
    return config


def classify_defaults() -> TrainConfig:
    config = TrainConfig()
    config.data.dataset, config.data.batch_size, config.data.seq_len = "sst2", 32, 128
    config.data.vocab_size = 2048
    config.model.preset = "debug"
    config.optim.lr, config.optim.warmup_steps = 1e-3, 50
    config.run.out_dir, config.run.eval_interval, config.run.checkpoint_interval = "runs/classify", 100, 500
    return config


def register(subparsers: argparse._SubParsersAction) -> None:
    sft = subparsers.add_parser(
        "sft", help="supervised fine-tuning on instructions (full or LoRA)",
        description="Fine-tune a model on instruction data rendered in ChatML; only the assistant's "
                    "tokens (and their <|im_end|>) are learned. --data is a shipped set "
                    "(tinystories-instruct, gsm8k, alpaca) or a .jsonl file of Alpaca records (instruction, "
                    "input, output) or chats (messages). With --lora-r, only low-rank adapters train and are "
                    "saved in PEFT's format. The final model goes to RUN/model (merged), ready for "
                    "`minillama chat`.")
    add_checkpoint_option(sft, "model to fine-tune (with its tokenizer files)", flag="--base")
    sft.add_argument("--data", dest="data.dataset", default=argparse.SUPPRESS,
                     help="SFT data: tinystories-instruct (default), gsm8k, alpaca, or a .jsonl path")
    sft.add_argument("--lora-r", type=positive_int, help="LoRA rank (omit for full fine-tuning); adapters usually want "
                                                "a higher --optim.lr than full fine-tuning, e.g. 2e-3")
    sft.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha; the update is scaled by "
                                                                    "alpha / r (default: %(default)s)")
    sft.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input "
                                                                     "(default: %(default)s)")
    sft.add_argument("--lora-targets", default="q_proj,v_proj",
                     help="modules to adapt, any of q,k,v,o,gate,up,down (_proj optional; "
                          "default: %(default)s)")
    sft.add_argument("--val-fraction", type=float, default=0.05,
                     help="share held out for validation when the data has no validation set "
                          "(default: %(default)s)")
    add_config_arguments(sft, sft_defaults())
    sft.set_defaults(func=run_sft)

    merge = subparsers.add_parser(
        "merge-lora", help="fold LoRA adapters (ours or PEFT's) into their base model",
        description="Merge a LoRA adapter directory (adapter_config.json + adapter_model.safetensors, as "
                    "written by `minillama sft --lora-r` or by PEFT) into its base model and write a plain, "
                    "transformers-loadable model directory.")
    add_checkpoint_option(merge, "base model", flag="--base")
    add_checkpoint_option(merge, "LoRA adapter", flag="--adapter")
    add_output_option(merge, "output model directory: new, empty or an earlier model (replaced atomically)")
    merge.add_argument("--tokenizer", help="tokenizer directory (default: the adapter's, else the base's)")
    merge.set_defaults(func=run_merge)

    classify = subparsers.add_parser(
        "classify", help="sentence classification (SST-2 sentiment): train or evaluate",
        description="Train a sequence classifier on the shipped SST-2, or evaluate one: a decoder with a score "
                    "head on the last token (transformers' LlamaForSequenceClassification), or a BERT with its "
                    "pooler on [CLS] and a classifier (BertForSequenceClassification).")
    actions = classify.add_subparsers(dest="classify_command", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train", help="train on SST-2 train, validate on dev, report dev and test accuracy",
        description="Train from a pretrained model (--base DIR: its decoder and tokenizer) or from scratch "
                    "(--model.preset, with a BPE trained on the training sentences unless "
                    "--data.tokenizer is given). The training set (--data.dataset): sst2 (the 6,920 SST-2 "
                    "training sentences, the default), sst2-glue (GLUE's SST-2 training set: 67,349 labelled "
                    "phrases of the same treebank) or a label<TAB>sentence file with a header line (0 negative, "
                    "1 positive). Validates on the SST-2 dev sentences; writes RUN/model (transformers-loadable) "
                    "and RUN/report.json (dev and test accuracy).")
    add_checkpoint_option(train, "pretrained model: a decoder, or a BERT of `minillama bert pretrain` (omitted: "
                                 "train from scratch)", required=False, flag="--base")
    train.add_argument("--from-scratch", action="store_true",
                       help="the --base model's shape and tokenizer with freshly initialised weights: the baseline "
                            "that shows what pretraining brings")
    add_config_arguments(train, classify_defaults())
    train.set_defaults(func=run_classify_train)
    evaluate = actions.add_parser("eval", help="accuracy of a trained classifier on an SST-2 split")
    add_checkpoint_option(evaluate, "classifier")
    evaluate.add_argument("--split", default="test", choices=["train", "dev", "test"],
                          help="SST-2 split (default: %(default)s)")
    evaluate.add_argument("--data", help="a label<TAB>sentence file with a header line instead of SST-2")
    evaluate.add_argument("--batch-size", type=positive_int, default=64)
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=run_classify_eval)


def run_sft(args: argparse.Namespace) -> int:
    from minillama.finetune.lora import LoRAConfig
    from minillama.finetune.sft import SFTSettings, sft
    from minillama.train.config import config_from_args
    from minillama.train.distributed import is_main_process

    config = config_from_args(args, defaults=sft_defaults())
    if config.model.overrides or config.model.preset != sft_defaults().model.preset:
        raise ValueError("sft takes the model from --base; --model.* settings do not apply")
    lora = None
    if args.lora_r is not None:
        lora = LoRAConfig(args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets)
    result = sft(config, SFTSettings(str(resolve_checkpoint(args.base)), lora, args.val_fraction))
    if not is_main_process():
        return 0
    status = "finished" if result.stopped_by == "budget" else "interrupted"
    loss = "" if result.val_loss is None else f", validation loss {result.val_loss:.4f}"
    print(f"{status} at step {result.step}{loss}; checkpoint {result.checkpoint}")
    if status == "finished":
        adapter = f", adapter: {result.out_dir / 'adapter'}" if lora else ""
        print(f"model: {result.out_dir / 'model'}{adapter}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from minillama.export import save_hf
    from minillama.finetune.sft import merge_adapter
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches, find_tokenizer_dir

    base, adapter = resolve_checkpoint(args.base), resolve_checkpoint(args.adapter)
    model = merge_adapter(base, adapter)
    tokenizer_dir = find_tokenizer_dir(args.tokenizer, adapter, base)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else None
    if tokenizer is not None:
        check_tokenizer_matches(tokenizer, model.config.vocab_size, base)
    out = save_hf(model, args.out, tokenizer, overwrite=args.overwrite, inputs=(base, adapter, tokenizer_dir))
    print(f"merged {args.adapter} into {args.base}: {out}")
    return 0


def run_classify_train(args: argparse.Namespace) -> int:
    from minillama.finetune.classify import ClassifySettings, train_classifier
    from minillama.train.config import config_from_args
    from minillama.train.distributed import is_main_process

    config = config_from_args(args, defaults=classify_defaults())
    base = args.base and str(resolve_checkpoint(args.base))
    report = train_classifier(config, ClassifySettings(base, args.from_scratch))
    if is_main_process():
        print(json.dumps(report, indent=2))
    return 0


def run_classify_eval(args: argparse.Namespace) -> int:
    from minillama.finetune.classify import evaluate_saved_classifier

    report = evaluate_saved_classifier(resolve_checkpoint(args.checkpoint), args.split, args.batch_size,
                                       args.device, args.data)
    print(json.dumps(report, indent=2))
    return 0
