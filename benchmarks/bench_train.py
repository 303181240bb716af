"""Training throughput: minillama vs transformers' LlamaForCausalLM, same shape, batch, dtype, threads.

    python benchmarks/bench_train.py                 # stories15M shape, batch 8 x 256, 2 threads
    python benchmarks/bench_train.py --quick         # eager only, fewer rounds
    python benchmarks/bench_train.py --precisions fp32

bf16 runs only where the CPU computes it natively (AMX / AVX512-BF16): elsewhere torch falls back to
a scalar bf16 matmul (about 1 GFLOP/s on a 2-core AVX2 EPYC), and a bf16 round would take hours.

Prints tokens/s for each (implementation, precision, compiled) pair, ratios against transformers'
best configuration, achieved FLOP/s against a float32 / bf16 GEMM measured in every round, and
page faults per step: glibc serves blocks over 32 MB from a fresh mmap, so every large tensor a
step allocates faults in all its pages again. To compare at equal memory management, let glibc
keep freed memory for both sides:

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/bench_train.py
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from minillama.hardware import cpu_description, cpu_has_native_bf16
from minillama.model import MiniLlama, ModelConfig
from minillama.train.perf import measure_matmul_flops


def build(kind: str, config: ModelConfig):
    torch.manual_seed(0)
    if kind == "minillama":
        return MiniLlama(config)
    import transformers

    from minillama.export import config_to_hf_dict

    hf_config = transformers.LlamaConfig(**{k: v for k, v in config_to_hf_dict(config).items()
                                            if k not in ("architectures", "model_type", "torch_dtype",
                                                         "attn_implementation")})
    return transformers.LlamaForCausalLM._from_config(hf_config, attn_implementation="sdpa")


def loss_fn(kind: str):
    if kind == "minillama":
        return lambda model, x, y: model(x, targets=y).loss  # the fused head + loss the trainer uses
    return lambda model, x, y: model(input_ids=x, labels=x).loss  # transformers shifts inside


def make_step(kind: str, config: ModelConfig, precision: str, compiled: bool, batch: int, seq: int):
    """One training step (forward, backward, fused AdamW) of a fresh model on a fixed random batch."""
    model = build(kind, config).train()
    # The fused kernel for both: minillama's trainer uses it, and so does transformers' Trainer by
    # default (optim="adamw_torch_fused" for torch >= 2.8).
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_model = torch.compile(model) if compiled else model
    compute = loss_fn(kind)
    x = torch.randint(0, config.vocab_size, (batch, seq))
    y = torch.roll(x, -1, dims=1)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast:
            loss = compute(step_model, x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step, steps: int) -> tuple[float, int]:
    """Seconds for `steps` steps, and the minor page faults they took (fresh memory touched)."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="stories15M")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds; the median counts")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="eager only, fewer rounds")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"),
                        help="default: fp32, and bf16 where the CPU runs it natively")
    args = parser.parse_args()
    print(f"host: {cpu_description()}", flush=True)
    torch.set_num_threads(args.threads)
    config = ModelConfig.from_preset(args.preset)
    steps, warmup, rounds = (2, 1, 3) if args.quick else (args.steps, args.warmup, args.rounds)
    compile_options = (False,) if args.quick else (False, True)
    precisions = args.precisions or (("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",))
    flops_per_token = MiniLlama(config).flops_per_token(args.seq)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    print(f"{args.preset}: batch {args.batch} x {args.seq}, {args.threads} threads, torch {torch.__version__}; "
          f"median of {rounds} interleaved rounds of {steps} steps")
    if "bf16" not in precisions:
        print("bf16 skipped: this CPU has no native bf16 (AMX / AVX512-BF16); --precisions bf16 forces it")
    # Every configuration is built and warmed up (compiled) first, then timed in interleaved
    # rounds, so a burst of load on a shared machine hits them all alike; the median round counts.
    # The GEMM peak is measured in every round too, so MFU compares like with like.
    steppers = {}
    for kind in ("transformers", "minillama"):
        for precision in precisions:
            for compiled in compile_options:
                step = make_step(kind, config, precision, compiled, args.batch, args.seq)
                timed(step, warmup)
                steppers[kind, precision, compiled] = step
    seconds = {key: [] for key in steppers}
    faults = {key: 0 for key in steppers}
    peak_samples = {p: [] for p in precisions}
    for _ in range(rounds):
        for p in precisions:
            peak_samples[p].append(measure_matmul_flops(dtypes[p], seconds=0.5))
        for key, step in steppers.items():
            elapsed, faulted = timed(step, steps)
            seconds[key].append(elapsed)
            faults[key] += faulted
    peaks = {p: statistics.median(samples) for p, samples in peak_samples.items()}
    print("GEMM peak (1024^3 matmul, median of the rounds): "
          + ", ".join(f"{p} {peaks[p] / 1e9:.0f} GFLOP/s (range {min(peak_samples[p]) / 1e9:.0f}-"
                      f"{max(peak_samples[p]) / 1e9:.0f})" for p in precisions))
    results = {}
    for (kind, precision, compiled), times in seconds.items():
        rate = steps * args.batch * args.seq / statistics.median(times)
        results[kind, precision, compiled] = rate
        achieved = rate * flops_per_token
        print(f"{kind:<13} {precision} {'compiled' if compiled else 'eager   '} {rate:8,.0f} tokens/s  "
              f"{achieved / 1e9:6.0f} GFLOP/s = " + ", ".join(f"{achieved / peaks[p]:5.1%} of the {p} GEMM"
                                                             for p in precisions)
              + f"  {faults[kind, precision, compiled] / (rounds * steps):8,.0f} page faults/step", flush=True)
    best_hf = max(v for k, v in results.items() if k[0] == "transformers")
    best_ours = max(v for k, v in results.items() if k[0] == "minillama")
    print(f"\nminillama best / transformers best: {best_ours / best_hf:.3f}x (target >= 1.3x)")
    if "fp32" in precisions:
        fp32_eager = results["minillama", "fp32", False] / results["transformers", "fp32", False]
        print(f"minillama fp32 eager / transformers fp32 eager: {fp32_eager:.2f}x")
        best_fp32 = max(v for k, v in results.items() if k[0] == "minillama" and k[1] == "fp32")
        print(f"minillama best fp32 MFU vs fp32 GEMM: {best_fp32 * flops_per_token / peaks['fp32']:.1%} "
              "(target >= 65%)")


if __name__ == "__main__":
    main()
