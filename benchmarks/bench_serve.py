"""Serving throughput: requests/s and tokens/s at 1, 4 and 16 concurrent clients on loopback.

    python benchmarks/bench_serve.py                        # stories15M shape, random weights
    python benchmarks/bench_serve.py --checkpoint runs/x/checkpoints/step-001000

`minillama serve` runs in its own process on 127.0.0.1 (so the clients' Python does not share its
GIL); each client is an async loop that sends streamed completions (ignore_eos, so every request
generates exactly --max-tokens tokens) back to back. Each level runs until --requests-per-client
requests per client are done or --seconds have passed, whichever is first, so the script always
ends. Reference, measured in the same run: `minillama.generate` on one prompt in this process, no
server. The ratios show what the HTTP layer costs at one client, and what batching gains with more.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from minillama.hardware import cpu_description


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a model directory with its tokenizer (default: random stories15M)")
    p.add_argument("--preset", default="stories15M", help="shape of the random model")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer trained for the random model")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    p.add_argument("--requests-per-client", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0, help="time limit of each level")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the server and the reference (1: on a busy 2-core machine, "
                        "more threads spin against each other)")
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def random_checkpoint(directory: Path, preset: str, vocab_size: int) -> Path:
    """A random-weight model of `preset`'s shape, with a tokenizer trained on the shipped stories."""
    from minillama.model import MiniLlama, ModelConfig
    from minillama.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(None, vocab_size, out_dir=directory / "tokenizer")
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, vocab_size=tokenizer.vocab_size,
                                     eos_token_id=tokenizer.eos_token_id)
    MiniLlama(config).save_pretrained(directory / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(directory / "tokenizer" / name, directory / "model" / name)
    return directory / "model"


def story_prompts(count: int) -> list[str]:
    """Beginnings of stories from the shipped validation text."""
    from minillama.assets import asset_path

    with gzip.open(asset_path("tinystories/tinystories_valid.txt.gz"), "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f if len(line.strip()) > 40]
    return [" ".join(line.split()[:12]) for line in lines[:count]]


def reference_tokens_per_second(checkpoint: Path, prompt: str, max_tokens: int, threads: int,
                                device: str) -> float:
    """`minillama.generate`, one prompt, in this process: the no-server baseline."""
    from minillama.generate import generate
    from minillama.model import MiniLlama
    from minillama.tokenizer import Tokenizer

    torch.set_num_threads(threads)
    model = MiniLlama.from_pretrained(checkpoint, device=device).eval()
    ids = torch.tensor([Tokenizer.from_pretrained(checkpoint).encode(prompt)], device=device)
    generate(model, ids, max_new_tokens=8, temperature=0.0, stop_token_ids=())  # warm-up
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        generate(model, ids, max_new_tokens=max_tokens, temperature=0.0, stop_token_ids=())
        best = max(best, max_tokens / (time.perf_counter() - start))
    return best


def start_server(checkpoint: Path, port: int, threads: int, device: str) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "minillama", "serve", "--checkpoint", str(checkpoint),
               "--port", str(port), "--model-name", "bench", "--threads", str(threads), "--device", device]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not start within 120 s")


async def one_client(http, url: str, prompts: list[str], args, stop_at: float, record: list) -> None:
    """Send requests back to back until this client's share is done or time is up."""
    for i in range(args.requests_per_client):
        if time.monotonic() > stop_at:
            return
        body = {"model": "bench", "prompt": prompts[i % len(prompts)], "max_tokens": args.max_tokens,
                "temperature": 0.8, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        start, first, tokens = time.perf_counter(), None, 0
        async with http.stream("POST", url, json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                    first = time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        record.append((time.perf_counter() - start, (first or time.perf_counter()) - start, tokens))


async def run_level(port: int, clients: int, prompts: list[str], args) -> dict[str, float]:
    import httpx

    url = f"http://127.0.0.1:{port}/v1/completions"
    record: list[tuple[float, float, int]] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=args.seconds + 60, limits=limits) as http:
        start = time.perf_counter()
        stop_at = time.monotonic() + args.seconds
        await asyncio.gather(*(one_client(http, url, prompts[c::clients] or prompts, args, stop_at, record)
                               for c in range(clients)))
        wall = time.perf_counter() - start
    return {"requests": len(record), "wall": wall, "req/s": len(record) / wall,
            "tok/s": sum(r[2] for r in record) / wall, "latency": statistics.mean(r[0] for r in record),
            "ttft": statistics.mean(r[1] for r in record)}


def main() -> None:
    args = parse_args()
    print(f"host: {cpu_description()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
        else:
            checkpoint = random_checkpoint(Path(tmp), args.preset, args.vocab_size)
        prompts = story_prompts(64)
        baseline = reference_tokens_per_second(checkpoint, prompts[0], args.max_tokens, args.threads,
                                               args.device)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = start_server(checkpoint, port, args.threads, args.device)
        try:
            rows = [(n, asyncio.run(run_level(port, n, prompts, args))) for n in args.clients]
        finally:
            server.terminate()
            server.wait(timeout=30)
    model = checkpoint if args.checkpoint else f"{args.preset} (random weights)"
    print(f"model {model}, {args.max_tokens} tokens per request, server threads {args.threads}, "
          f"device {args.device}, cores {os.cpu_count()}")
    print(f"reference: minillama.generate, one prompt, no server: {baseline:.1f} tokens/s")
    print(f"{'clients':>7} {'requests':>8} {'wall s':>7} {'req/s':>7} {'tokens/s':>9} {'latency s':>9} "
          f"{'TTFT s':>7} {'vs generate':>11} {'vs 1 client':>11}")
    one = rows[0][1]["tok/s"]
    for clients, r in rows:
        print(f"{clients:>7} {r['requests']:>8} {r['wall']:>7.2f} {r['req/s']:>7.2f} {r['tok/s']:>9.1f} "
              f"{r['latency']:>9.3f} {r['ttft']:>7.3f} {r['tok/s'] / baseline:>10.2f}x "
              f"{r['tok/s'] / one:>10.2f}x")


if __name__ == "__main__":
    main()
