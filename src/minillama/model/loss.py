"""The losses: next-token cross-entropy in transformers' convention, and the LM head and
cross-entropy fused, chunk by chunk, for training.

`cross_entropy(hidden @ W^T, targets)` materialises (tokens, vocab) logits and their gradient:
for a batch of 8 x 256 tokens and a 32k vocabulary that is 262 MB each, more memory traffic than
the rest of the model. Here the rows go through the head in chunks: each chunk's logits, in one
buffer that every chunk overwrites, give its loss *and* its gradients at once (softmax minus
one-hot, the closed form). Backward only scales the stored gradients. Same result as
`F.cross_entropy(..., ignore_index=-100, label_smoothing=eps)` (tested), less memory, faster on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minillama.model.config import IGNORE_INDEX


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against aligned targets (B, T); IGNORE_INDEX is ignored."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                           ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Unshifted labels (B, T) -> the target of each position (B, T): labels[t + 1], IGNORE_INDEX
    at the end (nothing follows the last token)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token loss, transformers' convention: labels (B, T) unshifted, position t predicts
    labels[t + 1], IGNORE_INDEX ignored."""
    return token_cross_entropy(logits, shift_labels(labels), label_smoothing)


# Rows per chunk = this / vocab in float32 (128 MB of logits: 256 rows of a 128k vocabulary), twice
# as many in bf16 / fp16 (the same bytes). Fewer, taller chunks mean fewer passes over the (V, C)
# weight gradient and taller, faster GEMMs; for stories15M on 2 cores the head and loss took
# 987 / 949 / 908 ms at 2^23 / 2^24 / 2^25 elements (one reused buffer), and the whole compiled
# step 1.62 / 1.55 s/step at 2^23 / 2^25.
CHUNK_ELEMENTS = 1 << 25


class Workspace:
    """Scratch tensors kept from one call to the next. The fused loss's (rows, vocab) buffers are
    large: allocated afresh on every training step, each is a fresh mmap on CPU (glibc serves
    blocks over 32 MB from mmap) whose pages all fault on first touch, which doubled the LM head's
    bf16 GEMM time (36 vs 17 ms for 1,048 x 288 x 32,000). The model owns one (`MiniLlama.workspace`)."""

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of `shape`, the same storage as last time when it still fits."""
        held = self._tensors.get(name)
        if held is None or held.dtype != dtype or held.device != device or held.shape != shape:
            held = self._tensors[name] = torch.empty(shape, dtype=dtype, device=device)
        return held


def _chunk_loss_in_place(logits: torch.Tensor, t: torch.Tensor, counted: torch.Tensor, eps: float,
                         need_grad: bool) -> torch.Tensor:
    """Float32 logits (n, V) -> the chunk's summed loss; the buffer then holds d loss / d logits
    (softmax - (1 - eps) one-hot - eps / V). In place: the (n, V) buffer is the only large tensor."""
    # what the loss needs from the logits, read before the softmax overwrites them
    row_loss = logits.amax(dim=-1, keepdim=True) - (1 - eps) * logits.gather(1, t)
    if eps:  # smoothing spreads eps over the vocabulary: eps * mean(-log p)
        row_loss -= eps * logits.mean(dim=-1, keepdim=True)
    probs = torch.softmax(logits, dim=-1, out=logits)
    # log-sum-exp = max logit - log(its probability), which (>= 1/V) never underflows
    row_loss -= probs.amax(dim=-1, keepdim=True).log()
    if need_grad:
        probs.scatter_add_(1, t, torch.full_like(row_loss, eps - 1))
        if eps:
            probs.sub_(eps / logits.shape[1])
    return (row_loss * counted).sum()


def _chunk_loss_fused(logits: torch.Tensor, t: torch.Tensor, counted: torch.Tensor, eps: float,
                      need_grad: bool) -> torch.Tensor:
    """The same for bf16 / fp16 logits, computed in float32 and written back as their gradient in
    the logits' dtype: compiled (below) into two reading passes and one writing pass over the
    buffer, where eager code makes six over a float32 copy (bf16 stories15M head: 88 vs 154 ms)."""
    x = logits.float()
    top = x.amax(dim=-1, keepdim=True)
    lse = top + torch.exp(x - top).sum(dim=-1, keepdim=True).log()
    row_loss = lse - (1 - eps) * x.gather(1, t)
    if eps:
        row_loss = row_loss - eps * x.mean(dim=-1, keepdim=True)
    if need_grad:
        one_hot = torch.arange(x.shape[1], device=x.device)[None, :] == t
        logits.copy_(torch.exp(x - lse) - (1 - eps) * one_hot.float() - eps / x.shape[1])
    return (row_loss * counted).sum()


# Shapes symbolic from the first call: the rows of a chunk change with every padded batch (SFT,
# translation) and each model brings its vocabulary, and one graph per shape would soon pass
# dynamo's recompile limit (a hard error under fullgraph). Measured as fast as the static graph
# (bf16, 2097 x 32000 chunk: 82 vs 88 ms).
_chunk_loss_compiled = torch.compile(_chunk_loss_fused, dynamic=True, fullgraph=True)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smoothing, compute_dtype, need_grad, workspace):
        """hidden (N, C), weight (V, C), targets (N,) -> mean loss over targets != -100."""
        vocab = weight.shape[0]
        rows = max(1, CHUNK_ELEMENTS * 4 // compute_dtype.itemsize // vocab)
        count = (targets != IGNORE_INDEX).sum().clamp(min=1)
        w = weight.to(compute_dtype)
        full_precision = compute_dtype == torch.float32  # products land straight in float32 tensors
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        # The weight's gradient accumulates in float32 over the chunks; backward hands out a scaled
        # copy, so the workspace's tensor is never anyone's .grad (autograd's version counter would
        # catch a second forward overwriting it before this backward ran).
        grad_weight = workspace.get("grad_weight", tuple(weight.shape), torch.float32, weight.device).zero_() \
            if need_grad else None
        # One buffer for every chunk's logits, kept in the workspace from step to step.
        logits_buffer = workspace.get("logits", (min(rows, hidden.shape[0]), vocab), compute_dtype, hidden.device)
        chunk_loss = _chunk_loss_in_place if full_precision else _chunk_loss_compiled
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start:start + rows].to(compute_dtype)
            t = targets[start:start + rows, None]
            counted = (t != IGNORE_INDEX).to(compute_dtype)  # (n, 1): ignored rows get no loss, no gradient
            t = t.clamp(min=0)
            logits = torch.mm(h, w.T, out=logits_buffer[:h.shape[0]])  # (n, V)
            total += chunk_loss(logits, t, counted, label_smoothing, need_grad)
            if need_grad:
                grad = logits  # now d loss / d logits; the mask is applied to h and to the (n, C)
                # product, far smaller than (n, V)
                grad_hidden[start:start + rows] = (grad @ w) * counted
                if full_precision:  # accumulated inside the GEMM: no (V, C) temporary
                    grad_weight.addmm_(grad.T, h * counted)
                else:  # a bf16 / fp16 product, accumulated in float32
                    grad_weight.add_(grad.T @ (h * counted))
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype), count)
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, count = ctx.saved_tensors
        scale = grad_output / count
        return grad_hidden * scale, grad_weight * scale, None, None, None, None, None


# The loop is eager, even inside a compiled model: inductor's version of it was 8% slower on CPU in
# float32 (949 vs 880 ms for stories15M's head) and would allocate fresh buffers again; only the
# bf16 / fp16 chunk arithmetic is compiled (`_chunk_loss_compiled`).
@torch.compiler.disable
def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         label_smoothing: float = 0.0, workspace: Workspace | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, never holding all the logits.

    hidden (B, T, C), weight (V, C), targets (B, T) aligned with hidden (already shifted), -100 ignored.
    Under autocast the matmuls run in the autocast dtype; the softmax in float32. `workspace` keeps
    the chunk buffers for the next call (a fresh one each call without it).
    """
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) \
        else weight.dtype
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden.flatten(0, 1), weight, targets.flatten(), label_smoothing,
                                         compute_dtype, need_grad, workspace or Workspace())
