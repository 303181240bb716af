"""MLM training throughput: minillama's BERT vs transformers' BertForMaskedLM, same config, batch,
masks, dtype (float32) and threads, measured in one run with the rounds interleaved.

    python benchmarks/bench_bert.py                        # bert mini, vocab 8192, batch 32 x 128, 1 thread
    python benchmarks/bench_bert.py --preset small --threads 2 --rounds 5

A step is forward, backward and a fused AdamW step on one masked batch (BERT's 15 % / 80-10-10
masking). Three rows: minillama as its trainer runs it (the MLM head only on the ~15 % selected
positions), minillama with the head on every position (the same computation as transformers'),
and transformers' BertForMaskedLM (SDPA attention). The ratio is tokens/s against transformers'.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from minillama.bert.config import BertConfig
from minillama.bert.masking import mask_tokens
from minillama.bert.model import BertForMaskedLM
from minillama.hardware import cpu_description

KINDS = ("minillama", "minillama-full-head", "transformers")


def build(kind: str, config: BertConfig):
    torch.manual_seed(0)
    if kind.startswith("minillama"):
        return BertForMaskedLM(config)
    import transformers

    return transformers.BertForMaskedLM(transformers.BertConfig(**config.to_dict(), attn_implementation="sdpa"))


def make_step(kind: str, config: BertConfig, batch: dict[str, torch.Tensor]):
    model = build(kind, config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]

    def loss() -> torch.Tensor:
        if kind == "minillama":
            return model(ids, attention_mask=mask, labels=labels).loss
        if kind == "minillama-full-head":
            logits = model(ids, attention_mask=mask).logits
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    def step():
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = BertConfig.from_preset(args.preset, vocab_size=args.vocab_size)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, args.vocab_size, (args.batch_size, args.seq_len), generator=generator)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    inputs, labels = mask_tokens(ids, (ids == 2) | (ids == 3), 4, args.vocab_size, generator)
    batch = {"input_ids": inputs, "labels": labels, "attention_mask": torch.ones_like(inputs)}
    tokens = args.batch_size * args.seq_len
    print(f"host: {cpu_description()}; torch {torch.__version__}; {args.threads} thread(s)")
    print(f"bert {args.preset} {config.hidden_size}x{config.num_hidden_layers} vocab {args.vocab_size}, "
          f"batch {args.batch_size} x {args.seq_len}, float32, {int((labels != -100).sum())} masked tokens")
    steps = {kind: make_step(kind, config, batch) for kind in KINDS}
    for step in steps.values():  # warm-up: allocation, first-call dispatch
        step()
        step()
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):  # interleaved, so a change in the machine's load hits all alike
        for kind, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[kind].append(args.steps * tokens / (time.perf_counter() - start))
    reference = statistics.median(rates["transformers"])
    print(f"{'implementation':<22}{'tokens/s (median)':>18}{'vs transformers':>17}")
    for kind in KINDS:
        rate = statistics.median(rates[kind])
        print(f"{kind:<22}{rate:>18,.0f}{rate / reference:>16.2f}x")


if __name__ == "__main__":
    main()
