"""`minillama tokenizer train | extend | encode | decode | info`."""

from __future__ import annotations

import argparse
import sys

from minillama.options import add_output_option, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    from minillama.tokenizer.train import DEFAULT_SPECIAL_TOKENS, ENGINES

    parser = subparsers.add_parser("tokenizer", help="train and inspect the byte-level BPE tokenizer",
                                   description="Train a byte-level BPE tokenizer, or encode/decode with one.")
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    train = commands.add_parser("train", help="train a tokenizer and save it as a Hugging Face directory")
    train.add_argument("--input", nargs="+", metavar="FILE",
                       help="UTF-8 text files, plain or .gz (default: the shipped TinyStories train sample)")
    train.add_argument("--vocab-size", type=positive_int, default=4096, help="tokens in all (default: %(default)s)")
    train.add_argument("--special-tokens", nargs="*", default=list(DEFAULT_SPECIAL_TOKENS), metavar="TOKEN",
                       help="special tokens, given ids 0, 1, ... (default: %(default)s)")
    add_output_option(train, "output directory: new, empty or an earlier tokenizer (default: %(default)s; "
                             "replaced atomically)", required=False, default="runs/tokenizer")
    train.add_argument("--engine", choices=ENGINES, default="minillama",
                       help="our trainer, or the tokenizers library's for very large corpora")
    train.add_argument("--workers", type=positive_int, default=None,
                       help="processes counting pre-tokens (default: all CPUs)")
    train.add_argument("--utf8-errors", choices=("strict", "replace"), default="strict",
                       help="on bytes that are not UTF-8: stop with an error, or read them as U+FFFD")
    train.add_argument("--model-max-length", type=positive_int, default=None,
                       help="context length recorded in tokenizer_config.json")
    train.set_defaults(func=_train)

    extend = commands.add_parser(
        "extend", help="add tokens learned on a new corpus (e.g. another language), keeping every old id",
        description="Learn new BPE merges on a new corpus, starting from the tokenizer's vocabulary and "
                    "merges, and append them: old tokens keep their ids and old merges their ranks.")
    extend.add_argument("--tokenizer", "-t", required=True, metavar="DIR", help="the tokenizer to extend")
    extend.add_argument("--input", nargs="+", metavar="FILE",
                        help="UTF-8 text files, plain or .gz (default: the training split of the shipped "
                             "Tatoeba Chinese sentences, dataset tatoeba-zh)")
    extend.add_argument("--add", type=int, required=True, metavar="N", help="new tokens to learn (at most)")
    add_output_option(extend, "output directory: new, empty or an earlier tokenizer (replaced atomically)")
    extend.add_argument("--allow-ascii", action="store_true",
                        help="also learn tokens made only of ASCII bytes (then English text may encode "
                             "differently; the old ids stay valid either way)")
    extend.add_argument("--utf8-errors", choices=("strict", "replace"), default="strict",
                        help="on bytes that are not UTF-8: stop with an error, or read them as U+FFFD")
    extend.set_defaults(func=_extend)

    encode = commands.add_parser("encode", help="print the token ids of a text")
    encode.add_argument("text", nargs="?", help="text to encode (default: read standard input)")
    encode.add_argument("--tokenizer", "-t", default="runs/tokenizer", metavar="DIR",
                        help="tokenizer directory or tokenizer.json (default: %(default)s)")
    encode.add_argument("--file", metavar="FILE", help="encode this file instead")
    encode.add_argument("--show-tokens", action="store_true", help="one token per line: id and its text")
    encode.set_defaults(func=_encode)

    decode = commands.add_parser("decode", help="print the text of token ids")
    decode.add_argument("ids", nargs="*", help="token ids (default: read them from standard input)")
    decode.add_argument("--tokenizer", "-t", default="runs/tokenizer", metavar="DIR",
                        help="tokenizer directory or tokenizer.json (default: %(default)s)")
    decode.add_argument("--skip-special-tokens", action="store_true")
    decode.set_defaults(func=_decode)

    info = commands.add_parser("info", help="vocabulary size, special tokens and fingerprint of a tokenizer")
    info.add_argument("--tokenizer", "-t", default="runs/tokenizer", metavar="DIR",
                      help="tokenizer directory or tokenizer.json (default: %(default)s)")
    info.set_defaults(func=_info)


def _train(args: argparse.Namespace) -> int:
    from minillama.tokenizer.api import train_tokenizer

    tokenizer = train_tokenizer(args.input, args.vocab_size, args.special_tokens, args.out, args.engine,
                                workers=args.workers, progress=True, utf8_errors=args.utf8_errors,
                                model_max_length=args.model_max_length, overwrite=args.overwrite)
    print(f"saved {tokenizer.vocab_size}-token tokenizer to {args.out} "
          f"(fingerprint {tokenizer.fingerprint()[:16]})")
    return 0


def _extend(args: argparse.Namespace) -> int:
    import contextlib

    from minillama.data.sources import dataset_text_files
    from minillama.tokenizer.extend import extend_tokenizer
    from minillama.tokenizer.tokenizer import Tokenizer

    old_size = Tokenizer.from_pretrained(args.tokenizer).vocab_size
    inputs = contextlib.nullcontext(args.input) if args.input else dataset_text_files("tatoeba-zh")
    with inputs as paths:
        tokenizer = extend_tokenizer(args.tokenizer, paths, args.add, args.out, allow_ascii=args.allow_ascii,
                                     overwrite=args.overwrite, progress=True, utf8_errors=args.utf8_errors)
    print(f"saved {tokenizer.vocab_size}-token tokenizer ({tokenizer.vocab_size - old_size} new tokens, ids "
          f"{old_size}..{tokenizer.vocab_size - 1}) to {args.out} (fingerprint {tokenizer.fingerprint()[:16]})")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from minillama.tokenizer.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            ids = list(tokenizer.encode_iterable(f))
    else:
        ids = tokenizer.encode(args.text if args.text is not None else sys.stdin.read())
    if args.show_tokens:
        for i in ids:
            print(f"{i}\t{tokenizer.decode([i])!r}")
    else:
        print(" ".join(map(str, ids)))
    return 0


def _decode(args: argparse.Namespace) -> int:
    from minillama.tokenizer.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    words = args.ids or sys.stdin.read().replace(",", " ").split()
    try:
        ids = [int(w) for w in words]
    except ValueError as exc:
        raise ValueError(f"token ids must be integers: {exc}") from None
    sys.stdout.write(tokenizer.decode(ids, skip_special_tokens=args.skip_special_tokens) + "\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    from minillama.tokenizer.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    print(f"vocab size:     {tokenizer.vocab_size}")
    print(f"merges:         {len(tokenizer.merges)}")
    print(f"special tokens: {' '.join(f'{t}={tokenizer.token_to_id(t)}' for t in tokenizer.special_tokens)}")
    print(f"eos / pad / bos: {tokenizer.eos_token_id} / {tokenizer.pad_token_id} / {tokenizer.bos_token_id}")
    print(f"fingerprint:    {tokenizer.fingerprint()}")
    return 0
