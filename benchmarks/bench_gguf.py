"""GGUF exports in llama.cpp against minillama's torch float32: file size, batch-1 greedy decode
tokens/s, and validation perplexity / bits per byte, all in one run.

    python benchmarks/bench_gguf.py [--checkpoint runs/pipeline] [--new-tokens 128] [--threads 1]
    python benchmarks/bench_gguf.py --shape stories15M      # random weights of that shape (speed only)

The checkpoint (default: the `make demo` model) is exported to f32, f16, q8_0 and q4_0 GGUF files
(`minillama export --format gguf`) and each is run through llama-cpp-python. Decoding is the same
greedy loop on both sides: the prompt in one forward, then one cached step per new token, the
argmax taken in Python; the decode steps are timed. Quality: the same non-overlapping
context-length windows of the validation split (`minillama eval`'s), the loss computed from each
engine's logits (llama.cpp's KV cache in float32 there, so that the weights' dtype is the only
difference; decoding uses its default float16 cache). Both engines get `--threads` threads.

`llama_cpp_rows` is what another benchmark calls to put llama.cpp rows beside its own.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_numpy import torch_decode  # the same timed greedy loop as the NumPy benchmark's

from minillama.hardware import cpu_description
from minillama.model import MiniLlama, ModelConfig

GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_0")


def llama_cpp_decode(path: Path, prompt: list[int], new_tokens: int, threads: int) -> tuple[list[int], float]:
    """The same loop in llama.cpp (llama-cpp-python's low-level eval)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + new_tokens + 1, n_batch=512,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    llm.eval(prompt)
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    ids = [token]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        ids.append(token)
    return ids, time.perf_counter() - start


def torch_loss(model: MiniLlama, windows: list[np.ndarray]) -> float:
    """Mean next-token loss (nats) over `windows` (each seq_len + 1 ids)."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for window in windows:
            ids = torch.from_numpy(window.astype(np.int64))[None]
            logits = model(ids[:, :-1]).logits[0].double()
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += len(window) - 1
    return total / count


def torch_logits(model: MiniLlama, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_cpp_quality(path: Path, windows: list[np.ndarray], threads: int, prompts: list[list[int]],
                      new_tokens: int) -> tuple[float, np.ndarray, list[list[int]]]:
    """(mean loss over `windows`, the first window's logits, greedy continuations of `prompts`)
    through llama.cpp, its KV cache in float32."""
    import llama_cpp

    seq_len = len(windows[0]) - 1
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=seq_len, n_batch=seq_len, n_ubatch=seq_len,
                          n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    total, count, first = 0.0, 0, None
    for window in windows:
        llm.reset()
        llm.eval(window[:-1].tolist())
        logits = np.array(llm.scores[:seq_len], dtype=np.float32)
        first = logits if first is None else first
        total += float(torch.nn.functional.cross_entropy(torch.from_numpy(logits).double(),
                                                         torch.from_numpy(window[1:].astype(np.int64)),
                                                         reduction="sum"))
        count += seq_len
    continuations = []
    for prompt in prompts:
        llm.reset()
        llm.eval(prompt)
        ids = []
        for _ in range(new_tokens):
            ids.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([ids[-1]])
        continuations.append(ids)
    return total / count, first, continuations


def torch_greedy(model: MiniLlama, prompt: list[int], new_tokens: int) -> list[int]:
    from minillama.generate import generate

    with torch.inference_mode():
        return generate(model, torch.tensor([prompt]), max_new_tokens=new_tokens, temperature=0.0,
                        stop_token_ids=())[0, len(prompt):].tolist()


def export_gguf(checkpoint: Path, out: Path, dtype: str) -> Path:
    from minillama.export.gguf import save_gguf
    from minillama.tokenizer import Tokenizer

    model = MiniLlama.from_pretrained(checkpoint)
    return save_gguf(model, out, Tokenizer.from_pretrained(checkpoint), dtype, overwrite=True)


def llama_cpp_rows(checkpoint: Path, prompt: list[int], new_tokens: int, threads: int,
                   windows: list[np.ndarray] | None = None, dtypes=GGUF_DTYPES,
                   directory: Path | None = None, prompts: list[list[int]] = (),
                   prompt_tokens: int = 32) -> list[dict]:
    """One row per GGUF dtype: file bytes, decode tokens/s and greedy ids of `prompt`; with
    `windows`, the validation loss through llama.cpp, the first window's logits ("logits") and
    greedy continuations of `prompts` ("continuations", `prompt_tokens` each). The files go to
    `directory` (default: a temporary one)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            path = export_gguf(checkpoint, Path(directory or tmp) / f"model-{dtype}.gguf", dtype)
            ids, seconds = llama_cpp_decode(path, prompt, new_tokens, threads)
            row = {"engine": "llama.cpp", "dtype": f"GGUF {dtype}", "bytes": path.stat().st_size,
                   "tokens_per_s": (new_tokens - 1) / seconds, "ids": ids}
            if windows:
                row["loss"], row["logits"], row["continuations"] = llama_cpp_quality(
                    path, windows, threads, list(prompts), prompt_tokens)
            rows.append(row)
    return rows


def validation_windows(model: MiniLlama, checkpoint: Path, count: int | None):
    """(windows of context + 1 ids over the validation split, the EvaluationText) as `minillama eval` reads them."""
    from minillama.train.evaluate import load_text

    text = load_text(model, checkpoint)
    seq_len = model.config.max_position_embeddings
    windows = [text.tokens[i * seq_len: (i + 1) * seq_len + 1] for i in range((len(text.tokens) - 1) // seq_len)]
    return windows[:count] if count else windows, text


PROMPTS = ("Once upon a time", "One day, Lily met a Shoggoth", "Tom and his dog went to the park. They saw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="runs/pipeline", help="model (run) directory with its tokenizer")
    parser.add_argument("--shape", help="instead: random weights of this preset (speed only), with the "
                                        "checkpoint's tokenizer")
    parser.add_argument("--prompt-tokens", type=int, default=8, help="prompt length of the timed decoding")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens of the timed decoding")
    parser.add_argument("--greedy-tokens", type=int, default=32, help="tokens of each prompt's greedy continuation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--windows", type=int, default=None, help="validation windows (default: all)")
    parser.add_argument("--dtypes", default=",".join(GGUF_DTYPES), help="GGUF dtypes (default: %(default)s)")
    parser.add_argument("--keep", help="keep the GGUF files in this directory")
    args = parser.parse_args()

    from minillama.tokenizer import Tokenizer
    from minillama.train.checkpoint import resolve_checkpoint
    from minillama.train.evaluate import bits_per_byte

    torch.set_num_threads(args.threads)
    checkpoint = resolve_checkpoint(args.checkpoint)
    tokenizer = Tokenizer.from_pretrained(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        if args.shape:
            torch.manual_seed(0)
            model = MiniLlama(ModelConfig.from_preset(args.shape, vocab_size=max(
                tokenizer.vocab_size, ModelConfig.from_preset(args.shape).vocab_size))).eval()
            model.save_pretrained(Path(tmp) / "model")
            tokenizer.save_pretrained(Path(tmp) / "model")
            checkpoint = Path(tmp) / "model"
        model = MiniLlama.from_pretrained(checkpoint).eval()
        windows, text = (None, None) if args.shape else validation_windows(model, checkpoint, args.windows)
        prompt = list(range(3, 3 + args.prompt_tokens))
        prompts = [tokenizer.encode(p) for p in PROMPTS]

        print(f"host: {cpu_description()}; torch {torch.__version__}, {args.threads} thread(s) each")
        config = model.config
        print(f"model: {checkpoint} ({model.num_parameters():,} parameters, hidden {config.hidden_size}, "
              f"{config.num_hidden_layers} layers, vocab {config.vocab_size}); decoding: prompt {len(prompt)}, "
              f"{args.new_tokens} new tokens" + (f"; quality: {len(windows)} validation windows of "
                                                 f"{len(windows[0]) - 1} tokens, greedy continuations of "
                                                 f"{len(prompts)} prompts x {args.greedy_tokens} tokens"
                                                 if windows else ""))
        ids, seconds = torch_decode(model, prompt, args.new_tokens)
        safetensors = sum(p.numel() * p.element_size() for p in model.state_dict().values())
        reference = {"engine": "torch", "dtype": "float32", "bytes": safetensors,
                     "tokens_per_s": (args.new_tokens - 1) / seconds, "ids": ids}
        if windows:
            reference["loss"] = torch_loss(model, windows)
            reference["logits"] = torch_logits(model, windows[0][:-1].tolist())
            reference["continuations"] = [torch_greedy(model, p, args.greedy_tokens) for p in prompts]
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
        rows = [reference, *llama_cpp_rows(checkpoint, prompt, args.new_tokens, args.threads, windows,
                                           dtypes=args.dtypes.split(","), prompts=prompts,
                                           directory=Path(args.keep) if args.keep else None,
                                           prompt_tokens=args.greedy_tokens)]

    quality = " greedy tokens = torch's | max abs logit diff | perplexity | bits per byte | change |"
    print("\n| engine | weights | file MiB | decode tokens/s | vs torch float32 |" + (quality if windows else ""))
    print("| --- | --- | ---: | ---: | ---: |" + (" ---: | ---: | ---: | ---: | ---: |" if windows else ""))
    for row in rows:
        line = (f"| {row['engine']} | {row['dtype']} | {row['bytes'] / 2**20:.2f} | {row['tokens_per_s']:.0f} | "
                f"{row['tokens_per_s'] / reference['tokens_per_s']:.2f}x |")
        if windows:
            pairs = [(a, b) for ours, theirs in zip(reference["continuations"], row["continuations"])
                     for a, b in zip(ours, theirs)]
            predicted = len(windows) * (len(windows[0]) - 1)
            bpb = bits_per_byte(row["loss"], predicted, text)
            ref_bpb = bits_per_byte(reference["loss"], predicted, text)
            line += (f" {sum(a == b for a, b in pairs)}/{len(pairs)} |"
                     f" {np.abs(row['logits'] - reference['logits']).max():.2e} |"
                     f" {math.exp(row['loss']):.3f} | {bpb:.4f} | {100 * (bpb / ref_bpb - 1):+.2f} % |")
        print(line)
    print("\n(greedy tokens equal: counted position by position, so a continuation that departs once "
          "counts its later tokens as different too)")


if __name__ == "__main__":
    main()
