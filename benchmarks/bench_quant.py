"""Quantized models: file size and batch-1 decoding speed, float32 against int8 and int4, in one run.

    python benchmarks/bench_quant.py                                  # stories15M shape, random weights
    python benchmarks/bench_quant.py --checkpoint runs/pipeline/hf    # a trained float model

Each backend turns the float checkpoint into its formats and returns rows (`Row`); the table shows
each row's model file size, median and best decoding tokens/s (greedy, batch 1, an 8-token prompt,
`--new-tokens` new tokens, no early stop) and both as ratios to the float32 row measured in the same
run. Rows are timed round-robin, `--repeats` times each, so a burst of load on a shared machine hits
them all alike. A backend is a function `(float_dir, work_dir, args) -> list[Row]` in BACKENDS:
torch (minillama's float32 and `minillama quantize` formats) and llama.cpp (the GGUF files of
`minillama export --format gguf`, run by llama-cpp-python).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minillama.hardware import cpu_description


@dataclass
class Row:
    backend: str  # "torch", ...
    format: str  # "float32", "int8", "int4 g32", ...
    file_bytes: int  # the model file(s) on disk
    decode: Callable[[], object]  # one timed greedy decode of `--new-tokens` tokens
    seconds: list[float] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a float model directory (default: random weights of --preset)")
    p.add_argument("--preset", default="stories15M", help="model shape without --checkpoint")
    p.add_argument("--group-size", type=int, default=32, help="int4 group size")
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each row")
    p.add_argument("--backends", nargs="+", default=None, help=f"subset of {', '.join(BACKENDS)}")
    return p.parse_args()


def safetensors_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))


def torch_rows(float_dir: Path, work: Path, args: argparse.Namespace) -> list[Row]:
    """minillama in torch: float32, and `minillama quantize`'s int8 and int4 directories (each
    int format twice: torch's integer kernels for the decode step, and dequantize + F.linear)."""
    from minillama.generate import generate, prepare_for_decoding
    from minillama.model import MiniLlama
    from minillama.quant.linear import QuantLinear
    from minillama.quant.model import quantize_model, save_quantized

    prompt = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))

    def decoder(model: MiniLlama) -> Callable[[], object]:
        model = prepare_for_decoding(model.eval())
        return lambda: generate(model, prompt, max_new_tokens=args.new_tokens, temperature=0, stop_token_ids=())

    rows = [Row("torch", "float32", safetensors_bytes(float_dir), decoder(MiniLlama.from_pretrained(float_dir)))]
    for method, label in (("int8", "int8"), ("int4", f"int4 g{args.group_size}")):
        model = MiniLlama.from_pretrained(float_dir)
        quantization = quantize_model(model, method, args.group_size)
        save_quantized(model, quantization, work / method)
        for kernel in (True, False):
            loaded = MiniLlama.from_pretrained(work / method)
            for module in loaded.modules():
                if isinstance(module, QuantLinear):
                    module.use_kernel = kernel
            name = f"{label} ({'torch int kernels' if kernel else 'dequantize + F.linear'})"
            rows.append(Row("torch", name, safetensors_bytes(work / method), decoder(loaded)))
    return rows


def llama_cpp_rows(float_dir: Path, work: Path, args: argparse.Namespace) -> list[Row]:
    """llama.cpp (llama-cpp-python) running `minillama export --format gguf` files of the same float
    checkpoint: f32, f16, q8_0 and q4_0. The same greedy loop as `generate`: the prompt in one
    forward, then one cached step per new token, the argmax taken in Python; llama.cpp's default
    float16 KV cache. A checkpoint without a tokenizer (random weights) gets a bytes-only one: the
    file needs a vocabulary, the speed does not depend on it."""
    import llama_cpp
    import numpy as np

    from minillama.export.gguf import save_gguf
    from minillama.model import MiniLlama
    from minillama.tokenizer import Tokenizer
    from minillama.tokenizer.train import DEFAULT_SPECIAL_TOKENS

    model = MiniLlama.from_pretrained(float_dir)
    if (float_dir / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_pretrained(float_dir)
    else:
        # the 256 bytes and one merge (llama.cpp refuses a BPE vocabulary without merges)
        tokenizer = Tokenizer({**{i: bytes([i]) for i in range(256)}, 256: b"th"}, [(b"t", b"h")],
                              list(DEFAULT_SPECIAL_TOKENS))
    prompt = torch.randint(0, 256, (8,), generator=torch.Generator().manual_seed(0)).tolist()

    def decoder(llm) -> Callable[[], object]:
        def decode() -> list[int]:
            llm.reset()
            llm.eval(prompt)
            ids = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
            for _ in range(args.new_tokens - 1):
                llm.eval(ids[-1:])
                ids.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            return ids
        return decode

    rows = []
    for dtype in ("f32", "f16", "q8_0", "q4_0"):
        path = save_gguf(model, work / f"model-{dtype}.gguf", tokenizer, dtype)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + args.new_tokens + 1, n_threads=args.threads,
                              n_threads_batch=args.threads, verbose=False)
        rows.append(Row("llama.cpp", f"GGUF {dtype}", path.stat().st_size, decoder(llm)))
    return rows


BACKENDS: dict[str, Callable[[Path, Path, argparse.Namespace], list[Row]]] = {"torch": torch_rows,
                                                                             "llama.cpp": llama_cpp_rows}


def random_checkpoint(preset: str, directory: Path) -> Path:
    from minillama.model import MiniLlama, ModelConfig

    torch.manual_seed(0)
    MiniLlama(ModelConfig.from_preset(preset)).save_pretrained(directory)
    return directory


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"host: {cpu_description()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        float_dir = Path(args.checkpoint) if args.checkpoint else random_checkpoint(args.preset, work / "float")
        rows = [row for name in (args.backends or BACKENDS) for row in BACKENDS[name](float_dir, work, args)]
        for row in rows:
            row.decode()  # warm-up, not timed
        for _ in range(args.repeats):
            for row in rows:
                start = time.perf_counter()
                row.decode()
                row.seconds.append(time.perf_counter() - start)
    reference = rows[0]
    ref_speed = args.new_tokens / statistics.median(reference.seconds)
    print(f"\n{args.checkpoint or args.preset + ' (random weights)'}: greedy, batch 1, 8-token prompt, "
          f"{args.new_tokens} new tokens, {args.threads} thread(s), {args.repeats} timed runs each")
    print(f"{'backend':9s} {'format':44s} {'file MB':>8s} {'vs f32':>7s} {'median tok/s':>13s} {'best tok/s':>11s} "
          f"{'vs f32':>7s}")
    for row in rows:
        median = args.new_tokens / statistics.median(row.seconds)
        size = row.file_bytes / reference.file_bytes
        print(f"{row.backend:9s} {row.format:44s} {row.file_bytes / 1e6:8.2f} {size:6.2f}x {median:13.1f} "
              f"{args.new_tokens / min(row.seconds):11.1f} {median / ref_speed:6.2f}x")


if __name__ == "__main__":
    main()
