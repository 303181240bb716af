"""`minillama sample` and `minillama chat`: text from a checkpoint, streamed to the terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from minillama.errors import CheckpointError, MiniLlamaError
from minillama.options import add_checkpoint_option, positive_int
from minillama.train.checkpoint import resolve_checkpoint


def register(subparsers: argparse._SubParsersAction) -> None:
    sample = subparsers.add_parser(
        "sample", help="generate text from a checkpoint, streamed as it is produced",
        description="Continue a prompt with a trained model. Greedy with --temperature 0; beam search with "
                    "--num-beams; speculative decoding with --draft.")
    add_checkpoint_option(sample, "model (with its tokenizer files)")
    sample.add_argument("--prompt", default="",
                        help="text to continue (empty: start from BOS / <|endoftext|>)")
    sample.add_argument("--max-new-tokens", type=positive_int, default=256, metavar="N")
    sample.add_argument("--num-samples", type=positive_int, default=1, metavar="N", help="independent continuations")
    sample.add_argument("--num-beams", type=positive_int, default=1, metavar="N", help="beam search with N beams")
    sample.add_argument("--length-penalty", type=float, default=1.0,
                        help="beam search: score = log p / length ** penalty")
    sample.add_argument("--draft", metavar="DIR",
                        help="smaller model with the same tokenizer: speculative decoding")
    sample.add_argument("--draft-tokens", type=positive_int, default=4, metavar="K",
                        help="tokens the draft guesses per round")
    sample.add_argument("--stop", action="append", default=[], metavar="STR",
                        help="stop before this string (repeatable)")
    sample.add_argument("--truncate", action="store_true",
                        help="keep the end of a prompt longer than the context instead of refusing it")
    sample.add_argument("--engine", choices=("torch", "numpy"), default="torch",
                        help="numpy: the pure-NumPy model (temperature / top-k / top-p / seed only)")
    _add_decoding_arguments(sample)
    sample.set_defaults(func=run_sample)

    chat = subparsers.add_parser(
        "chat", help="talk to a fine-tuned (ChatML) checkpoint",
        description="Multi-turn chat in the terminal. Each reply ends at <|im_end|>. Type /reset to forget "
                    "the conversation, /exit or Ctrl-D to quit.")
    add_checkpoint_option(chat, "fine-tuned (ChatML) model")
    chat.add_argument("--system", default=None, help="system message starting the conversation")
    chat.add_argument("--max-new-tokens", type=positive_int, default=512, metavar="N", help="longest reply")
    _add_decoding_arguments(chat, temperature=0.7)
    chat.set_defaults(func=run_chat)


def _add_decoding_arguments(parser: argparse.ArgumentParser, temperature: float = 0.8) -> None:
    parser.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None,
                        help="nucleus sampling: the smallest set of tokens with mass p")
    parser.add_argument("--min-p", type=float, default=None,
                        help="drop tokens below min-p x the top probability")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    parser.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decode step (see docs/generation.md for when it pays)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")


# ---- loading ---------------------------------------------------------------------------------------
def load(path: str | Path, device: str, compiled: bool = False) -> tuple[Any, Any, Path]:
    """(model, tokenizer, directory) ready for decoding (eager, or `compiled` decode steps)."""
    from minillama.generate.decode import prepare_for_decoding
    from minillama.hardware import resolve_device
    from minillama.model import MiniLlama
    from minillama.tokenizer import Tokenizer

    directory = resolve_checkpoint(path)
    model = MiniLlama.from_pretrained(directory, device=resolve_device(device)).eval()
    model = prepare_for_decoding(model, compiled)
    if not (directory / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory} has no tokenizer.json; copy the tokenizer the model was trained "
                              "with into it (`minillama tokenizer train --out DIR` writes one)")
    return model, Tokenizer.from_pretrained(directory), directory


def prompt_ids(text: str, model: Any, tokenizer: Any, max_new_tokens: int,
               truncate: bool) -> tuple[list[int], int]:
    """The prompt's ids and how many tokens may follow within the model's context."""
    from minillama.generate.special import start_token_id

    ids = tokenizer.encode(text) if text else []
    if not ids:
        start = start_token_id(model.config, tokenizer)
        if start is None:
            raise ValueError("the prompt is empty and there is no BOS or end-of-text token to start from; "
                             "give a prompt")
        ids = [start]
    context = model.config.max_position_embeddings
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if len(ids) >= context:
        if not truncate:
            raise ValueError(f"the prompt is {len(ids)} tokens but the model's context is {context}; "
                             "shorten it or pass --truncate to keep its end")
        ids = ids[-max(1, context - max_new_tokens):]
    return ids, min(max_new_tokens, context - len(ids))


# ---- sample ----------------------------------------------------------------------------------------
def _check_settings(args: argparse.Namespace) -> None:
    from minillama.generate.sampling import SamplingConfig

    SamplingConfig(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    if getattr(args, "num_beams", 1) < 1:
        raise ValueError(f"--num-beams must be >= 1, got {args.num_beams}")
    if getattr(args, "num_samples", 1) < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")


def run_sample(args: argparse.Namespace) -> int:
    _check_settings(args)
    if args.num_beams > 1 and args.draft:
        raise ValueError("choose beam search (--num-beams) or speculative decoding (--draft), not both")
    if args.engine == "numpy":
        return _sample_numpy(args)
    import torch

    from minillama.generate.special import stop_token_ids
    from minillama.generate.streaming import text_pieces

    model, tokenizer, _ = load(args.checkpoint, args.device, args.compile)
    draft = load(args.draft, args.device)[0] if args.draft else None
    ids, budget = prompt_ids(args.prompt, model, tokenizer, args.max_new_tokens, args.truncate)
    if budget < args.max_new_tokens:
        print(f"note: at most {budget} new tokens fit in the model's context of "
              f"{model.config.max_position_embeddings}", file=sys.stderr)
    stops = stop_token_ids(model.config, tokenizer)
    for index in range(args.num_samples):
        seed = None if args.seed is None else args.seed + index
        if index:
            print("\n---")
        print(args.prompt, end="", flush=True)
        with torch.no_grad():
            tokens = _token_source(args, model, draft, ids, budget, stops, seed)
            for piece in text_pieces(tokens, tokenizer, stops, args.stop):
                print(piece, end="", flush=True)
        print()
    return 0


def _token_source(args: argparse.Namespace, model: Any, draft: Any, ids: list[int], budget: int,
                  stops: tuple[int, ...], seed: int | None) -> Iterator[int]:
    """The new token ids, one by one, from whichever decoding the arguments ask for."""
    import torch

    from minillama.generate import beam_search
    from minillama.generate.decode import (
        compiled_decode_one_token,
        decode_one_token,
        iter_tokens,
        make_generator,
    )
    from minillama.generate.sampling import SamplingConfig
    from minillama.generate.speculative import iter_speculative

    device = model.lm_head.weight.device
    prompt = torch.tensor([ids], device=device)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    generator = make_generator(seed, None, device)
    if args.num_beams > 1:
        out = beam_search(model, prompt, num_beams=args.num_beams, max_new_tokens=budget,
                          length_penalty=args.length_penalty, stop_token_ids=stops)
        yield from out[0, len(ids):].tolist()
    elif draft is not None:
        rounds = iter_speculative(model, draft, prompt, max_new_tokens=budget,
                                  num_draft_tokens=args.draft_tokens, sampling=sampling,
                                  stop_token_ids=stops, generator=generator)
        for tokens in rounds:
            yield from tokens
    else:
        decode = compiled_decode_one_token() if args.compile else decode_one_token
        for token in iter_tokens(model, prompt, max_new_tokens=budget, sampling=sampling,
                                 stop_token_ids=stops, generator=generator, decode_fn=decode):
            yield int(token[0])


def _sample_numpy(args: argparse.Namespace) -> int:
    unsupported = [flag for flag, used in (("--num-beams", args.num_beams > 1), ("--draft", args.draft),
                                           ("--min-p", args.min_p), ("--compile", args.compile),
                                           ("--repetition-penalty", args.repetition_penalty != 1.0),
                                           ("--truncate", args.truncate)) if used]
    if unsupported:
        raise ValueError(f"--engine numpy does not support {', '.join(unsupported)}")
    try:
        from minillama.numpy_model import stream_text
    except ImportError as exc:
        raise MiniLlamaError(f"--engine numpy is unavailable: {exc}") from None
    from minillama.generate.streaming import StopStrings

    directory = resolve_checkpoint(args.checkpoint)
    for index in range(args.num_samples):
        if index:
            print("\n---")
        print(args.prompt, end="", flush=True)
        stops = StopStrings(args.stop)
        for piece in stream_text(directory, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                                 args.top_p, None if args.seed is None else args.seed + index):
            print(stops.push(piece), end="", flush=True)
            if stops.stopped:
                break
        print(stops.flush())
    return 0


# ---- chat ------------------------------------------------------------------------------------------
def run_chat(args: argparse.Namespace) -> int:
    import torch

    from minillama.generate.decode import (
        compiled_decode_one_token,
        decode_one_token,
        iter_tokens,
        make_generator,
    )
    from minillama.generate.sampling import SamplingConfig
    from minillama.generate.special import END_OF_TURN, stop_token_ids
    from minillama.generate.streaming import text_pieces
    from minillama.tokenizer import render_chat

    _check_settings(args)
    model, tokenizer, _ = load(args.checkpoint, args.device, args.compile)
    if tokenizer.token_to_id(END_OF_TURN) is None:
        raise ValueError(f"{args.checkpoint}'s tokenizer has no {END_OF_TURN} token: chat needs a ChatML "
                         "fine-tuned model (use `minillama sample` for a base model)")
    stops = stop_token_ids(model.config, tokenizer, chat=True)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    generator = make_generator(args.seed, None, model.lm_head.weight.device)
    decode = compiled_decode_one_token() if args.compile else decode_one_token
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
    context = model.config.max_position_embeddings
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": line})
        ids, _ = render_chat(tokenizer, system + history, add_generation_prompt=True)
        while len(ids) >= context - 1 and len(history) > 1:  # forget the oldest exchange
            history = history[2:] if len(history) > 2 else history[1:]
            ids, _ = render_chat(tokenizer, system + history, add_generation_prompt=True)
        if len(ids) >= context - 1:
            print(f"error: this message alone is {len(ids)} tokens; the model's context is {context}",
                  file=sys.stderr)
            history.pop()
            continue
        reply = []
        with torch.no_grad():
            tokens = iter_tokens(model, torch.tensor([ids], device=model.lm_head.weight.device),
                                 max_new_tokens=min(args.max_new_tokens, context - len(ids)),
                                 sampling=sampling, stop_token_ids=stops, generator=generator,
                                 decode_fn=decode)
            for piece in text_pieces((int(t[0]) for t in tokens), tokenizer, stops):
                reply.append(piece)
                print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": "".join(reply)})
    return 0
