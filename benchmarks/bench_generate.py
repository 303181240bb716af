"""Greedy decoding speed: minillama against transformers `generate`, on the same exported weights.

    python benchmarks/bench_generate.py                 # stories15M shape, random weights
    python benchmarks/bench_generate.py --target runs/x/checkpoints/step-001000 --draft runs/d/...

Batch 1 and batch 8 (one table each), an 8-token prompt, 200 new tokens, greedy, float32,
2 threads (the issue's setting).
Configurations run round-robin, `--repeats` times each, so a burst of load on a shared machine hits
them all alike; the table shows each one's median and best tokens/s and its ratio to transformers'
fastest configuration. Compilation happens in a warm-up run that is not timed (its time is shown).
With --target/--draft it measures speculative decoding instead: acceptance rate and speed-up over
the target alone, greedy and sampled, on prompts from the shipped TinyStories validation text.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from minillama.hardware import cpu_description


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="stories15M", help="model shape (random weights)")
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="sequences decoded together")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each configuration")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled configurations")
    p.add_argument("--no-transformers", action="store_true", help="skip transformers")
    p.add_argument("--target", help="a trained checkpoint: measure speculative decoding with --draft")
    p.add_argument("--draft", help="a smaller checkpoint with the same tokenizer")
    p.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 4, 6], help="k values to try")
    p.add_argument("--prompts", type=int, default=8, help="prompts for the speculative benchmark")
    return p.parse_args()


def round_robin(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run, `repeats` times, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def warm_up(runs: dict[str, Callable[[], torch.Tensor]]) -> dict[str, tuple[float, torch.Tensor]]:
    """First call of each run (compilation happens here): its seconds and its tokens."""
    out = {}
    for name, run in runs.items():
        start = time.perf_counter()
        tokens = run()
        out[name] = (time.perf_counter() - start, tokens)
    return out


def transformers_runs(directory: str, ids: torch.Tensor, new_tokens: int, compile: bool) -> dict:
    import transformers
    from transformers import CompileConfig

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                    pad_token_id=0, attention_mask=torch.ones_like(ids))

    def run(**extra):
        def call():
            with torch.no_grad():
                return model.generate(ids, **settings, **extra)
        return call

    runs = {"transformers dynamic cache": run(),
            "transformers static cache": run(cache_implementation="static", disable_compile=True)}
    if compile:
        # generate() compiles the decode step itself with a static cache; on CPU it must be told to.
        config = CompileConfig(fullgraph=True, dynamic=False, mode="default")
        config._compile_all_devices = True
        runs["transformers static + compile"] = run(cache_implementation="static", compile_config=config)
    return runs


def speed_table(args: argparse.Namespace) -> None:
    from minillama.export import save_hf
    from minillama.generate import prepare_for_decoding
    from minillama.model import MiniLlama, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig.from_preset(args.preset)
    with tempfile.TemporaryDirectory() as directory:
        save_hf(MiniLlama(config).eval(), directory)
        plain = MiniLlama.from_pretrained(directory).eval()
        model = prepare_for_decoding(MiniLlama.from_pretrained(directory).eval())
        for_compile = prepare_for_decoding(MiniLlama.from_pretrained(directory).eval(), compiled=True)
        for batch_size in args.batch_sizes:
            ids = torch.randint(0, config.vocab_size, (batch_size, args.prompt_tokens),
                                generator=torch.Generator().manual_seed(0))
            measure(args, directory, ids, plain, model, for_compile)


def measure(args: argparse.Namespace, directory: str, ids: torch.Tensor, plain, model, for_compile) -> None:
    """One table: every configuration decoding `ids` (batch, prompt), round-robin."""
    from minillama.generate import generate

    def ours(model, compile: bool) -> Callable[[], torch.Tensor]:
        return lambda: generate(model, ids, max_new_tokens=args.new_tokens, temperature=0,
                                stop_token_ids=(), compile=compile)

    runs = {"minillama eager": ours(model, False), "minillama eager, nn.Linear layout": ours(plain, False)}
    if not args.no_compile:
        runs["minillama compiled"] = ours(for_compile, True)
    if not args.no_transformers:
        runs.update(transformers_runs(directory, ids, args.new_tokens, not args.no_compile))
    first = warm_up(runs)
    load_before = os.getloadavg()[0]
    times = round_robin(runs, args.repeats)
    load_after = os.getloadavg()[0]

    reference = next(iter(first.values()))[1]
    batch_size = ids.shape[0]
    rates = {name: [batch_size * args.new_tokens / t for t in ts] for name, ts in times.items()}
    hf_best = max((statistics.median(r) for n, r in rates.items() if n.startswith("transformers")),
                  default=None)
    print(f"\n{args.preset}, float32, {args.threads} threads, batch {batch_size}, {args.prompt_tokens}-token prompt, "
          f"{args.new_tokens} new tokens, greedy; {args.repeats} runs each, round-robin "
          f"(load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} CPUs)")
    print(f"{'configuration':34s} {'median tok/s':>12s} {'best tok/s':>11s} {'vs HF best':>11s} "
          f"{'first run s':>12s} {'same tokens':>12s}")
    for name, r in rates.items():
        ratio = f"{statistics.median(r) / hf_best:10.2f}x" if hf_best else f"{'-':>11s}"
        same = "yes" if torch.equal(first[name][1], reference) else "NO"
        print(f"{name:34s} {statistics.median(r):12.1f} {max(r):11.1f} {ratio} {first[name][0]:12.1f} "
              f"{same:>12s}")


def speculative_table(args: argparse.Namespace) -> None:
    import gzip
    from importlib.resources import files

    from minillama.generate import generate, prepare_for_decoding, speculative_generate
    from minillama.model import MiniLlama
    from minillama.tokenizer import Tokenizer

    target = prepare_for_decoding(MiniLlama.from_pretrained(args.target).eval())
    draft = prepare_for_decoding(MiniLlama.from_pretrained(args.draft).eval())
    tokenizer = Tokenizer.from_pretrained(args.target)
    path = files("minillama.assets") / "tinystories" / "tinystories_valid.txt.gz"
    with gzip.open(str(path), "rt", encoding="utf-8") as f:
        stories = [line.strip() for line in f if len(line.split()) > 12][:args.prompts]
    prompts = [torch.tensor([tokenizer.encode(" ".join(s.split()[:8]))]) for s in stories]
    print(f"\nspeculative decoding: target {target.num_parameters() / 1e6:.1f}M params "
          f"({target.config.num_hidden_layers} layers), draft {draft.num_parameters() / 1e6:.1f}M "
          f"({draft.config.num_hidden_layers} layers); {len(prompts)} prompts x {args.new_tokens} tokens")
    print(f"{'decoding':28s} {'tok/s':>8s} {'speed-up':>9s} {'acceptance':>11s} {'same as target':>15s}")
    speculative_generate(target, draft, prompts[0], max_new_tokens=8, stop_token_ids=())  # warm-up
    for temperature in (0.0, 0.8):
        sampled = dict(temperature=temperature, stop_token_ids=(), max_new_tokens=args.new_tokens)
        start = time.perf_counter()
        plain = [generate(target, p, seed=i, **sampled) for i, p in enumerate(prompts)]
        base = time.perf_counter() - start
        label = "greedy" if temperature == 0 else f"T={temperature}"
        print(f"{'target alone, ' + label:28s} {len(prompts) * args.new_tokens / base:8.1f} {1.0:8.2f}x")
        for k in args.draft_tokens:
            start = time.perf_counter()
            outs = [speculative_generate(target, draft, p, num_draft_tokens=k, seed=i, **sampled)
                    for i, p in enumerate(prompts)]
            took = time.perf_counter() - start
            accepted = sum(s.accepted for _, s in outs) / max(1, sum(s.proposed for _, s in outs))
            same = "-"
            if temperature == 0:
                equal = all(torch.equal(o, e) for (o, _), e in zip(outs, plain, strict=True))
                same = "yes" if equal else "NO"
            print(f"{f'speculative k={k}, ' + label:28s} {len(prompts) * args.new_tokens / took:8.1f} "
                  f"{base / took:8.2f}x {accepted:10.1%} {same:>15s}")


def main() -> None:
    args = parse_args()
    print(f"host: {cpu_description()}", flush=True)
    torch.set_num_threads(args.threads)
    if args.target or args.draft:
        if not (args.target and args.draft):
            raise SystemExit("--target and --draft go together")
        speculative_table(args)
    else:
        speed_table(args)


if __name__ == "__main__":
    main()
