"""Benchmark `minillama prepare` against raw `tokenizers` batch encoding of the same text.

    python benchmarks/bench_prepare.py [--tokenizer DIR] [--scale 20] [--workers N]

Each measurement runs in a fresh child process; the parent samples the resident memory of that
process and all its descendants (the encoding workers) every 10 ms and reports the peak of the
sum. Rows:

- raw encode_batch: the whole corpus read into memory, split into documents and encoded with one
  `Tokenizer.encode_batch` call (the `tokenizers` thread pool on all cores), ids collected into
  one array: what a load-everything script does;
- prepare: `prepare_dataset` (streaming, worker processes, files written atomically).

Both run on the shipped TinyStories sample (1x) and on a corpus of `--scale` copies of it written
to a temporary directory, to show that prepare's peak memory does not grow with the corpus while
the load-everything approach does. Throughput is MB of UTF-8 document text per second of wall
time, process start-up excluded, worker start-up included; with --repeat N the fastest of N runs
is shown (and the largest peak memory). Without --tokenizer a 4,096-token
byte-level BPE is trained on the sample first (with the `tokenizers` trainer).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from minillama.hardware import cpu_description

EOT = "<|endoftext|>"


def sample_documents() -> list[str]:
    from minillama.assets import asset_path

    text = gzip.open(asset_path("tinystories/tinystories_train.txt.gz"), "rt", encoding="utf-8").read()
    return [d.strip() for d in text.split(EOT) if d.strip()]


def train_tokenizer(directory: Path, vocab_size: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT, "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(sample_documents(), trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def write_corpus(path: Path, copies: int) -> Path:
    docs = sample_documents()
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            for doc in docs:
                f.write(f"{doc}\n{EOT}\n")
    return path


# --- children: the measured work -----------------------------------------------------------------


def child_raw(tokenizer_dir: str, corpus: str) -> dict:
    import numpy as np
    from tokenizers import Tokenizer

    start = time.perf_counter()
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    eos = tokenizer.token_to_id(EOT)
    opener = gzip.open if corpus.endswith(".gz") else open
    with opener(corpus, "rt", encoding="utf-8") as f:
        docs = [d.strip() for d in f.read().split(EOT) if d.strip()]
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(docs, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos)
    tokens = np.array(ids, dtype=np.uint16)
    return {"seconds": time.perf_counter() - start, "bytes": sum(len(d.encode()) for d in docs),
            "tokens": int(tokens.size)}


def child_prepare(tokenizer_dir: str, corpus: str, workers: int) -> dict:
    from minillama.data import prepare_dataset

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        meta = prepare_dataset(tokenizer_dir, corpus, out, force=True, num_workers=workers, progress=False)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": meta["train_bytes"] + meta["val_bytes"],
            "tokens": meta["train_tokens"] + meta["val_tokens"]}


# --- parent: run a child and watch its memory ----------------------------------------------------


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def measure(args: list[str]) -> dict:
    child = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_bytes(child.pid))
            time.sleep(0.01)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = child.communicate()
    done.set()
    watcher.join()
    if child.returncode:
        raise SystemExit(f"child {args} failed with exit code {child.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", type=Path,
                        help="tokenizer directory (default: train one on the sample)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--scale", type=int, default=20, help="copies of the sample in the large corpus")
    parser.add_argument("--workers", type=int, default=None, help="prepare's workers (default: all cores)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each row; the fastest is shown")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    print(f"host: {cpu_description()}", flush=True)
    if args.child:
        kind, *rest = args.child
        result = child_raw(*rest) if kind == "raw" else child_prepare(rest[0], rest[1], int(rest[2]))
        print(json.dumps(result))
        return

    from minillama.assets import asset_path
    from minillama.hardware import available_cpus

    workers = args.workers or available_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = args.tokenizer or train_tokenizer(tmp / "tokenizer", args.vocab_size)
        sample = str(asset_path("tinystories/tinystories_train.txt.gz"))
        big = str(write_corpus(tmp / f"corpus_x{args.scale}.txt", args.scale))
        runs = [
            ("raw encode_batch", "1x", ["raw", str(tokenizer), sample]),
            ("prepare, 1 worker", "1x", ["prepare", str(tokenizer), sample, "1"]),
            (f"prepare, {workers} workers", "1x", ["prepare", str(tokenizer), sample, str(workers)]),
            ("raw encode_batch", f"{args.scale}x", ["raw", str(tokenizer), big]),
            ("prepare, 1 worker", f"{args.scale}x", ["prepare", str(tokenizer), big, "1"]),
            (f"prepare, {workers} workers", f"{args.scale}x", ["prepare", str(tokenizer), big, str(workers)]),
        ]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{os.cpu_count()} cores, load average {load:.2f} at start; tokenizer {tokenizer}\n")
        print("| method | corpus | text MB | tokens | seconds | MB/s | peak RSS MB |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for name, corpus, child_args in runs:
            tries = [measure(child_args) for _ in range(args.repeat)]
            r = min(tries, key=lambda t: t["seconds"])  # other load only ever slows a run down
            r["peak_rss_mb"] = max(t["peak_rss_mb"] for t in tries)
            mb = r["bytes"] / 1e6
            print(f"| {name} | {corpus} | {mb:.1f} | {r['tokens']:,} | {r['seconds']:.2f} | "
                  f"{mb / r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
