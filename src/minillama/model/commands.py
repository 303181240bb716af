"""`minillama model info | presets | resize-vocab`: a preset's or checkpoint's shape, parameter count and
FLOPs; growing a model's vocabulary to an extended tokenizer."""

from __future__ import annotations

import argparse

from minillama.options import add_checkpoint_option, add_output_option, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect model presets and checkpoints",
                                   description="Inspect model presets and checkpoints.")
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="shape, parameter count and FLOPs of a preset or checkpoint")
    source = info.add_mutually_exclusive_group()
    source.add_argument("--preset", default="tiny", help="a named preset (default: %(default)s)")
    add_checkpoint_option(info, "model (ours or a transformers Llama / Qwen2)", required=False, group=source)
    info.add_argument("--seq-len", type=positive_int, default=None, help="context for the FLOPs estimate")
    info.set_defaults(func=run_info)
    presets = sub.add_parser("presets", help="list the named presets")
    presets.set_defaults(func=run_presets)
    resize = sub.add_parser("resize-vocab", help="grow a model's embedding and LM head to an extended tokenizer",
                            description="Add rows to embed_tokens and lm_head for the new tokens of a tokenizer "
                                        "made by `minillama tokenizer extend`; old rows, and so the outputs on "
                                        "old-vocabulary inputs, stay as they were.")
    add_checkpoint_option(resize, "model (config.json + weights, its tokenizer beside them)")
    resize.add_argument("--tokenizer", "-t", required=True, metavar="DIR",
                        help="the extended tokenizer (it must extend the one saved with the model)")
    resize.add_argument("--init", choices=("mean", "random", "subword"), default="subword",
                        help="new rows: the model's random init, the mean of the old rows, or the mean of "
                             "the rows of the old tokens each new token was spelled with (default: %(default)s)")
    add_output_option(resize, "output model directory: new, empty or an earlier model (replaced atomically)")
    resize.add_argument("--seed", type=int, default=0, help="seed of --init random (default: %(default)s)")
    resize.set_defaults(func=run_resize)


def run_info(args: argparse.Namespace) -> int:
    import torch

    from minillama.model import MiniLlama, ModelConfig, load_config
    from minillama.train.checkpoint import resolve_checkpoint

    config = load_config(resolve_checkpoint(args.checkpoint)) if args.checkpoint else \
        ModelConfig.from_preset(args.preset)
    with torch.device("meta"):
        model = MiniLlama(config, init=False)
    seq_len = args.seq_len or config.max_position_embeddings
    print(f"{'parameters':<26}{model.num_parameters():,}")
    print(f"{'  without embeddings':<26}{model.num_parameters(exclude_embeddings=True):,}")
    print(f"{'train FLOPs/token @' + str(seq_len):<26}{model.flops_per_token(seq_len):,.0f}")
    for key, value in config.to_dict().items():
        print(f"{key:<26}{value}")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    import torch

    from minillama.model import PRESETS, MiniLlama, ModelConfig

    for name in PRESETS:
        config = ModelConfig.from_preset(name)
        with torch.device("meta"):
            params = MiniLlama(config, init=False).num_parameters()
        print(f"{name:<12} {params / 1e6:7.2f}M  hidden {config.hidden_size:<4} layers {config.num_hidden_layers:<3}"
              f"heads {config.num_attention_heads}/{config.num_key_value_heads} vocab {config.vocab_size} "
              f"context {config.max_position_embeddings}")
    return 0


def run_resize(args: argparse.Namespace) -> int:
    from minillama.model.resize import resize_model_dir
    from minillama.train.checkpoint import resolve_checkpoint

    sizes = resize_model_dir(resolve_checkpoint(args.checkpoint), args.tokenizer, args.init, args.out,
                             seed=args.seed, overwrite=args.overwrite)
    print(f"saved the model with {sizes['new']} tokens ({sizes['new'] - sizes['old']} new, init {args.init}) "
          f"and its tokenizer to {args.out}")
    return 0
