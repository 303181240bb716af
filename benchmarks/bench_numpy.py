"""Decode speed of the NumPy model against torch eager: batch 1, greedy, KV cache, stories15M shape.

    python benchmarks/bench_numpy.py [--prompt-tokens 8] [--new-tokens 200] [--repeats 1]

Random weights (speed does not depend on them). Both engines run the same greedy loop: prefill the
prompt, then one cached forward per new token, only the last position through the head; the decode
steps are timed. Prints tokens/s for each, the ratio and whether both produced the same ids.

OpenBLAS: on some processors this machine sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for old builds,
which can slow a current numpy; the BLAS configuration is printed. To measure without them:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_numpy.py
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from minillama.hardware import cpu_description
from minillama.model import KVCache, MiniLlama, ModelConfig
from minillama.numpy_model import NumpyLlama


def blas_summary() -> str:
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                      "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
                    if k in os.environ) or "no OPENBLAS_* / OMP_* variables"
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        pools = f"{config.get('name')} {config.get('version')} (install threadpoolctl for the kernel in use)"
    else:
        pools = "; ".join(f"{p['internal_api']} {p.get('version')} {p.get('architecture')} "
                          f"{p['num_threads']} threads" for p in threadpool_info())
    return f"{pools}; {env}"


def torch_decode(model: MiniLlama, prompt: list[int], new_tokens: int) -> tuple[list[int], float]:
    """Greedy ids and the seconds spent on the decode steps (prefill excluded)."""
    cache = KVCache(model.config, 1, len(prompt) + new_tokens)
    with torch.inference_mode():
        token = int(model(torch.tensor([prompt]), cache=cache, logits_to_keep=1).logits[0, -1].argmax())
        ids = [token]
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = int(model(torch.tensor([[token]]), cache=cache, logits_to_keep=1).logits[0, -1].argmax())
            ids.append(token)
        return ids, time.perf_counter() - start


def numpy_decode(model: NumpyLlama, prompt: list[int], new_tokens: int) -> tuple[list[int], float]:
    cache = model.new_cache(1, len(prompt) + new_tokens)
    token = int(model.forward(np.array([prompt]), cache, logits_to_keep=1)[0, -1].argmax())
    ids, step = [token], np.empty((1, 1), dtype=np.int64)
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        step[0, 0] = token
        token = int(model.forward(step, cache, logits_to_keep=1)[0, -1].argmax())
        ids.append(token)
    return ids, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per engine; the best is kept")
    args = parser.parse_args()
    print(f"host: {cpu_description()}", flush=True)

    config = ModelConfig.from_preset("stories15M")
    torch.manual_seed(0)
    model = MiniLlama(config).eval()
    twin = NumpyLlama(config, {k: v.numpy() for k, v in model.state_dict().items()})
    prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,)).tolist()
    print(f"stories15M shape: {model.num_parameters() / 1e6:.1f}M parameters, batch 1, float32, greedy, "
          f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"numpy {np.__version__}: {blas_summary()}")

    torch_decode(model, prompt, 16)  # warm-up: first-call allocations, thread pools
    numpy_decode(twin, prompt, 16)
    timed = args.new_tokens - 1
    engines = {"torch eager": (torch_decode, model), "numpy": (numpy_decode, twin)}
    runs: dict[str, list[tuple[list[int], float]]] = {name: [] for name in engines}
    for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits both engines
        for name, (run, engine) in engines.items():
            runs[name].append(run(engine, prompt, args.new_tokens))
    results = {}
    for name in engines:
        ids, seconds = min(runs[name], key=lambda r: r[1])
        results[name] = (ids, timed / seconds)
        print(f"{name:12s} {timed / seconds:8.1f} tokens/s  ({seconds * 1e3 / timed:.2f} ms/token)")
    ratio = results["numpy"][1] / results["torch eager"][1]
    same = results["numpy"][0] == results["torch eager"][0]
    print(f"numpy / torch eager: {ratio:.2f}x  (target >= 0.5x); same greedy ids: {same}")


if __name__ == "__main__":
    main()
