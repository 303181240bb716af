"""Tokenizer benchmark: training time and encoding throughput, ours against the libraries.

    .venv/bin/python benchmarks/bench_tokenizer.py [--threads 2] [--repeat 3]

On the shipped TinyStories sample at vocab 4096, times our trainer, the `tokenizers` BPE trainer
and sentencepiece's BPE trainer; then our trainer on a ~130 kB English corpus at vocab 500; then
encoding throughput (MB of UTF-8 per second) of our encoder and of the `tokenizers` runtime on our
saved tokenizer.json (checking that the ids agree). Each figure is the best of `--repeat` runs.

Targets (issue 3): our trainer within 4x of `tokenizers` on 2 cores, and under 0.4 s on the
130 kB corpus. `--threads` caps every library's threads and our worker processes.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

from minillama.hardware import cpu_description


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads/processes for every trainer (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--small-corpus", type=Path, default=None,
                        help="the ~130 kB corpus (default: the first 130 kB of the TinyStories valid set)")
    parser.add_argument("--skip-sentencepiece", action="store_true")
    return parser.parse_args()


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    args = parse_args()
    print(f"host: {cpu_description()}", flush=True)
    if args.threads:  # must precede importing tokenizers (its thread pool reads this once)
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import tokenizers

    from minillama.assets import asset_path
    from minillama.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer, train_bpe

    specials = list(DEFAULT_SPECIAL_TOKENS)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cpus
    tmp = Path(tempfile.mkdtemp(prefix="bench_tokenizer_"))
    with gzip.open(asset_path("tinystories/tinystories_train.txt.gz"), "rt", encoding="utf-8") as f:
        text = f.read()
    corpus = tmp / "tinystories_train.txt"  # every trainer reads the same plain file
    corpus.write_text(text, encoding="utf-8")
    size_mb = len(text.encode("utf-8")) / 1e6
    print(f"corpus: shipped TinyStories train sample, {size_mb:.2f} MB; vocab {args.vocab_size}; "
          f"{threads} thread(s) of {cpus} CPU(s); best of {args.repeat}")
    print(f"python {sys.version.split()[0]}, tokenizers {tokenizers.__version__}")

    # Training ---------------------------------------------------------------------------------------
    ours_s, (vocab, merges) = best_time(
        lambda: train_bpe(corpus, args.vocab_size, specials, workers=threads), args.repeat)

    def train_tokenizers():
        tok = tokenizers.Tokenizer(tokenizers.models.BPE())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=args.vocab_size, special_tokens=specials, show_progress=False,
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
        tok.train([str(corpus)], trainer)
        return tok

    hf_s, _ = best_time(train_tokenizers, args.repeat)
    rows = [("minillama (ours, pure Python)", ours_s), ("tokenizers BpeTrainer (Rust)", hf_s)]
    if not args.skip_sentencepiece:
        try:
            import sentencepiece as spm

            def train_sentencepiece():
                spm.SentencePieceTrainer.train(
                    input=str(corpus), model_prefix=str(tmp / "sp"), model_type="bpe",
                    vocab_size=args.vocab_size, character_coverage=1.0, num_threads=threads, minloglevel=2,
                    input_sentence_size=0, max_sentence_length=1 << 16, user_defined_symbols=specials)

            sp_s, _ = best_time(train_sentencepiece, args.repeat)
            rows.append(("sentencepiece BPE (C++)", sp_s))
        except ImportError:
            print("sentencepiece not installed: skipped")
    print("\ntraining                          time (s)   / tokenizers")
    for name, seconds in rows:
        print(f"  {name:<32}{seconds:8.3f}   {seconds / hf_s:6.2f}x")
    ratio = ours_s / hf_s
    print(f"  target: ours within 4x of tokenizers -> {ratio:.2f}x ({'met' if ratio <= 4 else 'NOT met'})")

    # Small corpus -----------------------------------------------------------------------------------
    if args.small_corpus:
        small = args.small_corpus
    else:
        with gzip.open(asset_path("tinystories/tinystories_valid.txt.gz"), "rb") as f:
            data = f.read(130_000)
        small = tmp / "small.txt"
        small.write_text(data.decode("utf-8", errors="ignore"), encoding="utf-8")
    small_s, _ = best_time(lambda: train_bpe(small, 500, ["<|endoftext|>"], workers=threads), args.repeat)
    print(f"\nsmall corpus ({small.stat().st_size / 1000:.0f} kB, vocab 500): ours {small_s:.3f} s "
          f"(target < 0.4 s: {'met' if small_s < 0.4 else 'NOT met'})")

    # Encoding ---------------------------------------------------------------------------------------
    ours = Tokenizer(vocab, merges, specials)
    ours.save_pretrained(tmp / "tok")
    hf = tokenizers.Tokenizer.from_file(str(tmp / "tok" / "tokenizer.json"))
    docs = [d for d in text.split("<|endoftext|>") if d]
    doc_mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6

    def ours_cold():  # a fresh tokenizer: its pre-token cache starts empty
        return Tokenizer(vocab, merges, specials).encode_batch(docs)

    enc_rows = [
        ("minillama encode (1 process, cold cache)", *best_time(ours_cold, args.repeat)),
        ("minillama encode (warm cache)", *best_time(lambda: ours.encode_batch(docs), args.repeat)),
        ("tokenizers encode_batch (Rust, threads)",
         *best_time(lambda: [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)], args.repeat)),
        ("tokenizers encode, one doc at a time",
         *best_time(lambda: [hf.encode(d, add_special_tokens=False).ids for d in docs], args.repeat)),
    ]
    reference = enc_rows[2][2]
    assert all(ids == reference for _, _, ids in enc_rows), "ids differ between encoders"
    hf_mbs = doc_mb / enc_rows[2][1]
    print(f"\nencoding {len(docs)} stories ({doc_mb:.2f} MB), ids identical    MB/s   / tokenizers batch")
    for name, seconds, _ in enc_rows:
        print(f"  {name:<44}{doc_mb / seconds:7.2f}   {doc_mb / seconds / hf_mbs:6.2f}x")


if __name__ == "__main__":
    main()
