"""EXAMPLE — the seed notes' minimal learning model: sentiment from one attention layer.

    word embeddings -> one multi-head self-attention layer (no bias, dropout on the attention
    weights) -> mean over the words -> linear -> negative / positive

trained on the shipped SST-2 sentences and evaluated on its dev and test splits. It is the
smallest model in which attention does real work: each word's output is a mixture of the words it
attends to, so "not good" can come out different from "good". It has no positions (word order
enters only through what attends to what), no residual and no MLP: a teaching example, not part
of the library.

    python examples/attention_sentiment.py --epochs 3
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from minillama.finetune.classify import PAD_WORD as PAD
from minillama.finetune.classify import sst2_word_ids, sst2_word_vocab


class AttentionSentiment(nn.Module):
    def __init__(self, vocab_size: int, dim: int = 64, heads: int = 4, dropout: float = 0.1,
                 classes: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        # bias=False: no biases in the input and output projections; dropout acts on the
        # attention weights (softmax(QK^T / sqrt(d))), as in torch's MultiheadAttention.
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, bias=False, batch_first=True)
        self.classify = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T), 0 = padding -> class logits (B, classes)."""
        padding = ids == PAD  # (B, T): keys that must not be attended to
        x = self.embed(ids)  # (B, T, C)
        y, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)  # (B, T, C)
        keep = (~padding).unsqueeze(-1).float()  # (B, T, 1)
        pooled = (y * keep).sum(1) / keep.sum(1)  # mean over the real words: (B, C)
        return self.classify(pooled)


@torch.no_grad()
def accuracy(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = sum(int((model(ids[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(ids), batch_size))
    return correct / len(ids)


def train(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, epochs: int = 3, batch_size: int = 64,
          lr: float = 3e-3, seed: int = 0) -> list[float]:
    """AdamW over shuffled mini-batches; returns the mean training loss of each epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses = []
    for _ in range(epochs):
        model.train()
        order, total = torch.randperm(len(ids), generator=generator), 0.0
        for start in range(0, len(ids), batch_size):
            batch = order[start:start + batch_size]
            batch_ids = ids[batch]
            # Drop the all-padding columns, keeping a multiple of 16: only a few distinct shapes,
            # so the CPU kernels prepared for a shape get reused.
            width = -(-int((batch_ids != PAD).sum(1).max()) // 16) * 16
            loss = F.cross_entropy(model(batch_ids[:, :width]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(ids))
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: the model is too small to gain from more)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vocab = sst2_word_vocab()
    (train_ids, train_labels), (dev_ids, dev_labels), (test_ids, test_labels) = (
        sst2_word_ids(split, vocab) for split in ("train", "dev", "test"))
    model = AttentionSentiment(len(vocab) + 2, args.dim, args.heads, args.dropout)
    start = time.perf_counter()
    losses = train(model, train_ids, train_labels, args.epochs, lr=args.lr, seed=args.seed)
    seconds = time.perf_counter() - start
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters, {len(vocab):,} words; "
          f"{args.epochs} epochs in {seconds:.1f} s; train loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    dev, test = accuracy(model, dev_ids, dev_labels), accuracy(model, test_ids, test_labels)
    print(f"accuracy: dev {dev:.3f}, test {test:.3f}")


if __name__ == "__main__":
    main()
