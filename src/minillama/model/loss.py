"""The LM head and cross-entropy fused, chunk by chunk, for training.

`cross_entropy(hidden @ W^T, targets)` materialises (tokens, vocab) logits and their gradient:
for a batch of 8 x 256 tokens and a 32k vocabulary that is 262 MB each, more memory traffic than
the rest of the model. Here the rows go through the head in chunks: each chunk's logits give its
loss *and* its gradients at once (softmax minus one-hot, the closed form), and are freed before the
next chunk. Backward only scales the stored gradients. Same result as
`F.cross_entropy(..., ignore_index=-100, label_smoothing=eps)` (tested), less memory, faster on CPU.
"""

from __future__ import annotations

import torch

ROWS_PER_CHUNK_ELEMENTS = 1 << 21  # chunk rows x vocab: ~8 MB of float32 logits, stays in cache


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smoothing, compute_dtype, need_grad):
        """hidden (N, C), weight (V, C), targets (N,) -> mean loss over targets != -100."""
        vocab = weight.shape[0]
        rows = max(1, ROWS_PER_CHUNK_ELEMENTS // vocab)
        valid = targets != -100
        count = valid.sum().clamp(min=1)
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start:start + rows].to(compute_dtype)
            t, ok = targets[start:start + rows], valid[start:start + rows]
            logits = (h @ w.T).float()  # (n, V)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
            row_loss = (1 - label_smoothing) * (lse - picked)
            if label_smoothing:  # smoothing spreads eps over the vocabulary: eps * mean(-log p)
                row_loss = row_loss + label_smoothing * (lse - logits.mean(dim=-1))
            total += (row_loss * ok).sum()
            if need_grad:
                # d loss / d logits = softmax - (1 - eps) one-hot - eps / V, per counted row
                grad = torch.exp_(logits.sub_(lse[:, None]))
                grad.scatter_add_(1, t.clamp(min=0)[:, None], torch.full_like(picked[:, None], label_smoothing - 1))
                if label_smoothing:
                    grad.sub_(label_smoothing / vocab)
                grad.mul_((ok / count)[:, None])
                grad = grad.to(compute_dtype)
                grad_hidden[start:start + rows] = (grad @ w).to(hidden.dtype)
                grad_weight += (grad.T @ h).float()
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, never holding all the logits.

    hidden (B, T, C), weight (V, C), targets (B, T) aligned with hidden (already shifted), -100 ignored.
    Under autocast the matmuls run in the autocast dtype; the softmax in float32.
    """
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) \
        else weight.dtype
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden.flatten(0, 1), weight, targets.flatten(), label_smoothing,
                                         compute_dtype, need_grad)
