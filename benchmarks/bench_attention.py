"""Peak memory and time of one attention forward + backward, by implementation and sequence length.

    python benchmarks/bench_attention.py                         # 1k ... 16k, eager / sdpa / flash_tiled
    python benchmarks/bench_attention.py --lengths 1024 2048 --heads 4

Causal self-attention, float32, (batch, heads, seq, head_dim) = (1, 1, T, 64) by default. Each
(implementation, length) runs in a fresh subprocess, so its peak resident memory (the kernel's
high-water mark, `ru_maxrss`) is its own: the figure is that peak minus the memory in use just
before the call, with q, k, v already allocated. eager materialises the (T x T) scores and
probabilities (quadratic); flash_tiled (model/flash.py) keeps one (block x block) tile and the
log-sum-exp (linear); SDPA on CPU uses torch's fused flash kernel. The table shows each peak, the
peak per token (constant when memory is linear), the slope of a least-squares line through the
peaks, and time per call next to SDPA's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

IMPLEMENTATIONS = ("eager", "sdpa", "flash_tiled")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per case (the first, measured for "
                   "memory, is not timed)")
    p.add_argument("--one", nargs=2, metavar=("IMPLEMENTATION", "LENGTH"), help=argparse.SUPPRESS)
    return p.parse_args()


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_one(implementation: str, length: int, args: argparse.Namespace) -> dict:
    """In this process: peak bytes of the first forward + backward, then seconds per call."""
    import torch

    from minillama.model.llama import ATTENTION

    torch.set_num_threads(args.threads)
    attention = ATTENTION[implementation]
    # Warm up on a short sequence: library code and kernels load here, not inside the measurement.
    small = [torch.randn(1, args.heads, 128, args.head_dim, requires_grad=True) for _ in range(3)]
    attention(*small, None, True).sum().backward()

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, length, args.head_dim, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, args.heads, length, args.head_dim)

    def call():
        for x in (q, k, v):
            x.grad = None
        attention(q, k, v, None, True).backward(grad)

    before = resident_bytes()
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # ru_maxrss is in KiB
    times = [first]
    for _ in range(args.repeats - 1):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"peak_bytes": peak, "seconds": statistics.median(times)}


def run_case(implementation: str, length: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one", implementation, str(length), "--heads", str(args.heads),
               "--head-dim", str(args.head_dim), "--threads", str(args.threads), "--repeats", str(args.repeats)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout)


def slope(lengths: list[int], peaks: list[float]) -> float:
    """Least-squares bytes per token through (length, peak)."""
    mean_x, mean_y = statistics.fmean(lengths), statistics.fmean(peaks)
    return (sum((x - mean_x) * (y - mean_y) for x, y in zip(lengths, peaks))
            / sum((x - mean_x) ** 2 for x in lengths))


def main() -> None:
    args = parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args)))
        return
    from minillama.hardware import cpu_description

    print(f"host: {cpu_description()}")
    print(f"causal attention fwd+bwd, float32, batch 1, {args.heads} head(s) of {args.head_dim}, "
          f"{args.threads} threads; peak = resident high-water mark above the inputs\n")
    results = {name: {} for name in args.implementations}
    print(f"{'length':>7} " + " ".join(f"{name + ' MiB':>16} {'s':>8}" for name in args.implementations))
    for length in args.lengths:
        cells = []
        for name in args.implementations:
            r = results[name][length] = run_case(name, length, args)
            cells.append(f"{'failed':>16} {'':>8}" if "error" in r
                         else f"{r['peak_bytes'] / 2**20:16.1f} {r['seconds']:8.3f}")
        print(f"{length:>7} " + " ".join(cells), flush=True)

    print()
    for name, by_length in results.items():
        ok = {n: r for n, r in by_length.items() if "error" not in r}
        if len(ok) < 2:
            continue
        lengths, peaks = list(ok), [r["peak_bytes"] for r in ok.values()]
        per_token = [p / n / 1024 for n, p in zip(lengths, peaks)]
        print(f"{name:>12}: slope {slope(lengths, peaks) / 1024:8.1f} KiB/token; KiB per token at each length "
              + " ".join(f"{x:.1f}" for x in per_token)
              + f"; peak x{peaks[-1] / peaks[0]:.1f} for length x{lengths[-1] / lengths[0]:.0f}")
    if "sdpa" in results and "flash_tiled" in results:
        ratios = [results["flash_tiled"][n]["seconds"] / results["sdpa"][n]["seconds"] for n in args.lengths
                  if "error" not in results["flash_tiled"][n] and "error" not in results["sdpa"][n]]
        print("flash_tiled time / sdpa time: " + " ".join(f"{r:.1f}x" for r in ratios))
    for name, by_length in results.items():
        for length, r in by_length.items():
            if "error" in r:
                print(f"{name} at {length} failed: {r['error']}")


if __name__ == "__main__":
    main()
