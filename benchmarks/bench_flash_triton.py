"""FlashAttention in Triton (attn_implementation flash_triton) against torch's SDPA on a GPU.

    python benchmarks/bench_flash_triton.py [--batch 4] [--heads 16] [--kv-heads 4] [--seq 2048]
                                            [--head-dim 64] [--dtype bfloat16] [--no-causal] [--block N]
    python benchmarks/bench_flash_triton.py --compile-only [--arch 90]    # no GPU needed

On a CUDA device: forward and forward + backward times of the Triton kernels and of SDPA (torch's
own flash kernel where it applies), their ratio, and how far apart their outputs and gradients are.

--compile-only compiles the three kernels for an NVIDIA architecture (90: H100/H200, 80: A100, 89:
L4/RTX 40xx) on a machine without one (Triton ships its own ptxas) and prints each kernel's compile
time and shared memory: the interpreter, which the tests use without a GPU, checks what
the kernels compute, not that they compile, nor that they fit a GPU's shared memory. Triton caches
what it compiled (~/.triton/cache): a second run takes no time.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from minillama.hardware import cpu_description
from minillama.model import flash_triton

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
POINTERS = ("Q", "K", "V", "Out", "dO", "dQ", "dK", "dV")  # the kernels' tensors of the inputs' dtype


def compile_only(args: argparse.Namespace) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if flash_triton.interpreted():
        raise SystemExit("TRITON_INTERPRET=1 is set: unset it to compile the kernels")
    kernels = flash_triton.load_kernels()
    dtype = DTYPES[args.dtype]
    block = args.block or flash_triton.default_block(dtype)
    switches = flash_triton.kernel_switches(dtype, args.head_dim, not args.no_causal, True, block)
    print(f"sm_{args.arch}, {args.dtype}, head size {args.head_dim}, block {block}, with a mask, "
          f"causal {not args.no_causal}; triton {triton.__version__}")
    for name in ("forward_kernel", "backward_dkdv_kernel", "backward_dq_kernel"):
        kernel = getattr(kernels, name)
        signature = {}
        for arg in kernel.arg_names:
            signature[arg] = ("constexpr" if arg in switches else f"*{TRITON_TYPES[dtype]}" if arg in POINTERS
                              else "*u8" if arg == "Mask" else "*fp32" if arg in ("Lse", "Delta")
                              else ("i32",) * 4 if arg.endswith("_strides") else "fp32" if arg == "scale" else "i32")
        constants = {(kernel.arg_names.index(arg),): value for arg, value in switches.items()}
        start = time.perf_counter()
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants),
                                  target=GPUTarget("cuda", args.arch, 32))
        print(f"  {name:22s} {time.perf_counter() - start:6.1f} s  {compiled.metadata.shared / 1024:6.1f} KiB "
              "shared memory")


def timed(fn, repeats: int) -> float:
    """Median milliseconds of fn() on the GPU."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def benchmark(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --compile-only to check that the kernels compile")
    dtype, causal = DTYPES[args.dtype], not args.no_causal
    shapes = ((args.batch, args.heads, args.seq, args.head_dim), (args.batch, args.kv_heads, args.seq, args.head_dim))
    q = torch.randn(*shapes[0], device="cuda", dtype=dtype, requires_grad=True)
    k, v = (torch.randn(*shapes[1], device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    implementations = {
        "flash_triton": lambda: flash_triton.flash_attention(q, k, v, causal=causal, block=args.block),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                       enable_gqa=args.heads != args.kv_heads),
    }
    results = {}
    for name, attend in implementations.items():
        forward = timed(lambda attend=attend: attend(), args.repeats)
        both = timed(lambda attend=attend: attend().backward(grad), args.repeats)
        q.grad = k.grad = v.grad = None
        out = attend()
        out.backward(grad)
        results[name] = (forward, both, [t.detach().float() for t in (out, q.grad, k.grad, v.grad)])
        q.grad = k.grad = v.grad = None
    print(f"{torch.cuda.get_device_name()} (host: {cpu_description()}); q {tuple(q.shape)}, k/v "
          f"{tuple(k.shape)}, {args.dtype}, causal {causal}")
    for name, (forward, both, _) in results.items():
        print(f"  {name:13s} forward {forward:8.3f} ms   forward + backward {both:8.3f} ms")
    (f_ours, b_ours, ours), (f_sdpa, b_sdpa, theirs) = results["flash_triton"], results["sdpa"]
    print(f"  flash_triton / sdpa time: forward {f_ours / f_sdpa:.2f}, forward + backward {b_ours / b_sdpa:.2f}")
    differences = ", ".join(f"{name} {(a - b).abs().max().item():.2e}"
                            for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs, strict=True))
    print(f"  largest differences: {differences}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--no-causal", action="store_true")
    parser.add_argument("--block", type=int, default=None, help="tile size (default: flash_triton.default_block)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile-only", action="store_true", help="compile the kernels for --arch; no GPU needed")
    parser.add_argument("--arch", type=int, default=90, help="with --compile-only: the compute capability, e.g. 80")
    args = parser.parse_args()
    (compile_only if args.compile_only else benchmark)(args)


if __name__ == "__main__":
    main()
