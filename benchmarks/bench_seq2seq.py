"""Seq2seq speed: minillama's encoder–decoder vs transformers' MarianMTModel (and torch.nn.Transformer
for training), same config, batch, dtype and threads, measured in one run, rounds interleaved.

    python benchmarks/bench_seq2seq.py                        # `translate train`'s shape (tiny, 4k), batch 64, 1 thread
    python benchmarks/bench_seq2seq.py --checkpoint runs/translate/model --threads 2   # a trained model, real sentences
    python benchmarks/bench_seq2seq.py --preset small --vocab-size 8000 --quick

Training: target tokens/s of forward + backward + fused AdamW on fixed padded batches (label
smoothing 0 for all, since MarianMTModel's loss has none; minillama with 0.1 too, its training
default). Translation: sentences/s of greedy and beam search (4) on the same weights, which give
the same tokens (tests/test_seq2seq_decode.py), so both sides do the same work.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from minillama.hardware import cpu_description
from minillama.seq2seq.config import config_from_preset
from minillama.seq2seq.decode import beam_search_ids, generate_ids
from minillama.seq2seq.model import MiniSeq2Seq
from minillama.seq2seq.reference import TorchTransformerMT


def padded_batch(batch: int, vocab: int, seed: int, lengths: tuple[int, int] = (6, 24)):
    """Random sources (B, S) with a mask, and labels (B, T) padded with -100: Tatoeba-like lengths."""
    g = torch.Generator().manual_seed(seed)
    source_len = torch.randint(*lengths, (batch,), generator=g)
    target_len = (source_len.float() * 0.9).long().clamp(min=2)
    S, T = int(source_len.max()), int(target_len.max())
    source = torch.randint(2, vocab, (batch, S), generator=g)
    mask = (torch.arange(S)[None] < source_len[:, None]).long()
    labels = torch.randint(2, vocab, (batch, T), generator=g)
    labels = labels.masked_fill(torch.arange(T)[None] >= target_len[:, None], -100)
    return source.masked_fill(mask == 0, 1), mask, labels


def training_steps(ours: MiniSeq2Seq, marian, batches, bf16: bool) -> dict:
    """name -> one training step over the next batch (each side keeps its own optimizer)."""
    torch_mt = TorchTransformerMT(ours.config)
    losses = {
        "minillama": (ours, lambda m, b: m(b[0], b[1], labels=b[2]).loss),
        "minillama (smoothing 0.1)": (ours, lambda m, b: m(b[0], b[1], labels=b[2], label_smoothing=0.1).loss),
        "MarianMTModel": (marian, lambda m, b: m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss),
        "nn.Transformer": (torch_mt, lambda m, b: m(b[0], b[1], labels=b[2]).loss),
    }
    steps = {}
    for name, (model, loss_fn) in losses.items():
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step(model=model, loss_fn=loss_fn, optimizer=optimizer, counter=[0]):  # noqa: B006 (a counter)
            batch = batches[counter[0] % len(batches)]
            counter[0] += 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return int((batch[2] != -100).sum())

        steps[name] = step
    return steps


def measure(steps: dict, rounds: int, per_round: int) -> dict[str, float]:
    """Median rate (units of what each step returns, per second) over interleaved rounds."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(rounds):
        for name, step in steps.items():
            start, done = time.perf_counter(), 0
            for _ in range(per_round):
                done += step()
            rates[name].append(done / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def decoding_steps(ours: MiniSeq2Seq, marian, sources, max_new_tokens: int) -> dict:
    source, mask = sources
    n = source.shape[0]

    def run(fn):
        def step():
            with torch.no_grad():
                fn()
            return n
        return step

    return {
        "minillama greedy": run(lambda: generate_ids(ours, source, mask, max_new_tokens=max_new_tokens)),
        "MarianMTModel greedy": run(lambda: marian.generate(input_ids=source, attention_mask=mask, do_sample=False,
                                                            num_beams=1, max_new_tokens=max_new_tokens)),
        "minillama beam 4": run(lambda: beam_search_ids(ours, source, mask, num_beams=4,
                                                        max_new_tokens=max_new_tokens)),
        "MarianMTModel beam 4": run(lambda: marian.generate(input_ids=source, attention_mask=mask, do_sample=False,
                                                            num_beams=4, max_new_tokens=max_new_tokens)),
    }


def real_sentences(model_dir: str, count: int):
    from minillama.seq2seq import data
    from minillama.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(model_dir)
    test = data.with_references(data.oriented(data.split_pairs(data.tatoeba_pairs())["test"], "en-zh"))
    rows = tokenizer.encode_batch([s for s, _ in test[:count]])
    return data.pad_sources(rows, tokenizer.pad_token_id)


def report(title: str, rates: dict[str, float], reference: str, unit: str) -> None:
    print(f"\n{title}")
    for name, rate in rates.items():
        print(f"  {name:28s} {rate:10.1f} {unit}   {rate / rates[reference]:.2f}x {reference}")


def main() -> None:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny",
                        help="shape without --checkpoint (default: %(default)s, `translate train`'s)")
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="autocast training to bfloat16")
    parser.add_argument("--checkpoint", help="a trained translation model: decode its test sentences")
    parser.add_argument("--sentences", default="1,64",
                        help="sentences per decoding batch, comma-separated (1: `minillama translate` reading stdin "
                             "line by line; 64: `translate eval`)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-training", action="store_true", help="measure translation only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # generate's note that max_new_tokens overrides max_length
    print(f"host: {cpu_description()}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.threads} thread(s)")
    if args.checkpoint:
        ours = MiniSeq2Seq.from_pretrained(args.checkpoint)
    else:
        torch.manual_seed(0)
        ours = MiniSeq2Seq(config_from_preset(args.preset, vocab_size=args.vocab_size, pad_token_id=1,
                                              eos_token_id=0, decoder_start_token_id=1))
    c = ours.config
    print(f"model: d_model {c.d_model}, {c.encoder_layers}+{c.decoder_layers} layers, ffn {c.encoder_ffn_dim}, "
          f"vocab {c.vocab_size}, {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters")
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(f"{tmp}/m")
        marian = transformers.MarianMTModel.from_pretrained(f"{tmp}/m", attn_implementation="sdpa")
    rounds, per_round = (2, 2) if args.quick else (5, 4)

    if not args.no_training:
        batches = [padded_batch(args.batch, c.vocab_size, seed) for seed in range(8)]
        rates = measure(training_steps(ours, marian, batches, args.bf16), rounds, per_round)
        report(f"training, batch {args.batch}, {'bf16 autocast' if args.bf16 else 'float32'} (target tokens/s)",
               rates, "MarianMTModel", "tok/s")

    ours.eval()
    marian.eval()
    for count in (int(n) for n in args.sentences.split(",")):
        sources = real_sentences(args.checkpoint, count) if args.checkpoint else \
            padded_batch(count, c.vocab_size, seed=99)[:2]
        # a batch of one sentence is quick: more steps per round
        rates = measure(decoding_steps(ours, marian, sources, args.max_new_tokens), rounds, max(1, 16 // count))
        greedy = {k: v for k, v in rates.items() if "greedy" in k}
        beam = {k: v for k, v in rates.items() if "beam" in k}
        report(f"greedy translation, {count} sentence(s) per batch (sentences/s)", greedy,
               "MarianMTModel greedy", "sent/s")
        report(f"beam search (4), {count} sentence(s) per batch", beam, "MarianMTModel beam 4", "sent/s")


if __name__ == "__main__":
    main()
