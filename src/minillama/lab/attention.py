"""Attention questions: scaling, scoring functions, heads, dropout, biases, cost, sharing, depth, KV heads."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minillama.lab.common import (
    figure_png,
    fit,
    llama_loss,
    loss_curves_png,
    mean_loss,
    random_windows,
    story_bytes,
)
from minillama.lab.registry import Experiment, LabResult


def attention_scaling(out: Path | None, quick: bool) -> LabResult:
    """Random unit-variance queries and keys: q·k has variance d_k, so unscaled scores grow like √d_k,
    softmax saturates (entropy → 0) and its gradient vanishes; 1/√d_k keeps both constant, while
    1/d_k over-corrects (attention flattens towards uniform as d_k grows)."""
    dims = (16, 64, 256) if quick else (16, 64, 256, 1024)
    seq = 64
    scalings = {"none": lambda d: 1.0, "1/sqrt(d_k)": lambda d: d ** -0.5, "1/d_k": lambda d: 1.0 / d}
    rows, facts = [], {name: {"entropy": [], "grad": []} for name in scalings}
    for d in dims:
        q, k = torch.randn(256, seq, d), torch.randn(256, seq, d)
        row = [d]
        for name, scale in scalings.items():
            scores = (q @ k.transpose(-1, -2) * scale(d)).requires_grad_()  # (batch, seq, seq)
            probs = scores.softmax(-1)
            entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean().item() / math.log(seq)
            (probs * torch.randn_like(probs)).sum().backward()  # a random upstream gradient
            grad = scores.grad.norm(dim=-1).mean().item()
            facts[name]["entropy"].append(entropy)
            facts[name]["grad"].append(grad)
            row += [entropy, grad]
        rows.append(row)
    columns = ["d_k"] + [f"{what} ({name})" for name in scalings for what in ("entropy", "grad")]
    figure = _plot_scaling(out, dims, facts)
    return LabResult(
        columns, rows, figure=figure, facts={"dims": list(dims), **facts},
        conclusion="Without scaling, attention entropy (as a fraction of uniform) and the softmax gradient "
                   "collapse as d_k grows; 1/sqrt(d_k) keeps both the same at every d_k; 1/d_k drifts "
                   "towards uniform attention. So the scale must grow like sqrt(d_k), the std of q·k.")


def _plot_scaling(out: Path | None, dims, facts) -> Path | None:
    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
        for name, values in facts.items():
            axes[0].plot(dims, values["entropy"], "o-", label=name)
            axes[1].plot(dims, values["grad"], "o-", label=name)
        for ax, label in zip(axes, ("attention entropy / log(seq)", "softmax gradient norm")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("d_k")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[1].set_yscale("log")
        axes[0].legend()
        return fig

    return figure_png(out, "attention-scaling", draw)


# ---- A small hand-written byte-level LM, for the attention variants MiniLlama does not have --------
class VariantAttention(nn.Module):
    """Causal multi-head self-attention whose parts the experiments swap: the score function
    (`dot`: q·k / sqrt(D); `additive`: Bahdanau's w·tanh(q + k)), one shared projection for Q, K and V
    (`shared_qkv`), and dropout on the attention weights. x (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, heads: int, score: str = "dot", shared_qkv: bool = False,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.heads, self.head_dim, self.score, self.shared_qkv = heads, dim // heads, score, shared_qkv
        self.qkv = nn.Linear(dim, dim if shared_qkv else 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(attn_dropout)
        if score == "additive":  # one scoring vector w per head: e_ts = w · tanh(q_t + k_s)
            self.w = nn.Parameter(torch.randn(heads, self.head_dim) / math.sqrt(self.head_dim))
        self.keep = False  # keep the last scores and weights (B, H, T, T), for inspection
        self.scores: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, -1, self.heads, self.head_dim).transpose(1, 3)  # (B, H, 1|3, T, D)
        q, k, v = (qkv[:, :, 0],) * 3 if self.shared_qkv else qkv.unbind(2)  # each (B, H, T, D)
        if self.score == "additive":
            hidden = torch.tanh(q[:, :, :, None] + k[:, :, None])  # (B, H, T, T, D): D times the scores
            scores = torch.einsum("bhtsd,hd->bhts", hidden, self.w)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        if self.keep:
            self.scores, self.weights = scores.detach(), weights.detach()
        y = self.dropout(weights) @ v  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class TinyLM(nn.Module):
    """Byte-level pre-norm transformer: embedding + learned positions, `layers` blocks of
    x + drop(attn(norm(x))) and x + drop(mlp(norm(x))), final norm, head. ids (B, T) -> logits (B, T, 256)."""

    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2, seq: int = 64,
                 resid_dropout: float = 0.0, **attention):
        super().__init__()
        self.embed, self.pos = nn.Embedding(256, dim), nn.Parameter(torch.randn(seq, dim) * 0.02)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2 * layers + 1))
        self.attns = nn.ModuleList(VariantAttention(dim, heads, **attention) for _ in range(layers))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
                                  for _ in range(layers))
        self.dropout = nn.Dropout(resid_dropout)  # on each residual branch, before the add
        self.head = nn.Linear(dim, 256, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[:ids.shape[1]]
        for i, (attn, mlp) in enumerate(zip(self.attns, self.mlps)):
            x = x + self.dropout(attn(self.norms[2 * i](x)))
            x = x + self.dropout(mlp(self.norms[2 * i + 1](x)))
        return self.head(self.norms[-1](x))


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Next-byte cross-entropy of a model that returns logits (B, T, V)."""
    inputs, targets = batch
    return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())


def _windows(split: str, batch: int, seq: int, seed: int, data: torch.Tensor | None = None):
    data = story_bytes(split, 400_000) if data is None else data
    return random_windows(data, batch, seq, seed)


def _train_and_eval(model: nn.Module, loss_of, steps: int, batch: int, seq: int, seed: int = 0,
                    lr: float = 3e-3, eval_batches: int = 8, train_data: torch.Tensor | None = None
                    ) -> tuple[list[float], float]:
    """Fit on random training windows, then the mean loss on fixed validation windows.
    Returns (training losses, validation loss)."""
    losses = fit(model, loss_of, _windows("train", batch, seq, seed, train_data), steps, lr=lr)
    return losses, mean_loss(model, loss_of, _windows("val", batch, seq, 1234), eval_batches)


def _step_seconds(models: dict[str, nn.Module], loss_of, batch: int, seq: int, rounds: int = 5) -> dict[str, float]:
    """Seconds of one forward + backward of each model, the best of `rounds` taken in turns (so that
    load from other processes falls on all of them alike)."""
    inputs = next(_windows("val", batch, seq, 7))
    best = dict.fromkeys(models, float("inf"))
    for _ in range(rounds + 1):  # the first round warms up
        for name, model in models.items():
            start = time.perf_counter()
            loss_of(model, inputs).backward()
            best[name] = min(best[name], time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    return best


# ---- multiplicative vs additive ---------------------------------------------------------------
def additive_attention(out: Path | None, quick: bool) -> LabResult:
    """The same byte-level LM with dot-product scores and with Bahdanau's additive scores w·tanh(q + k),
    trained for the same steps: validation loss, seconds per step (the same run), and the size of what
    each score function materialises: (T, T) scores vs the (T, T, D) tanh intermediate."""
    steps, batch, seq, dim, heads = (150, 8, 32, 32, 2) if quick else (300, 16, 32, 64, 4)
    seed = torch.initial_seed()  # the lab's --seed: every model starts from it, and sees the same batches
    rows, facts, curves, models = [], {}, {}, {}
    for score in ("dot", "additive"):
        torch.manual_seed(seed)
        models[score] = model = TinyLM(dim, heads, layers=2, seq=seq, score=score)
        curves[score], val = _train_and_eval(model, lm_loss, steps, batch, seq, seed)
        facts[score] = {"val_loss": val}
    seconds = _step_seconds(models, lm_loss, batch, seq)
    for score in ("dot", "additive"):
        D = dim // heads
        # per (query, key) pair and head: dot = D multiplies + D adds; additive = D adds (q + k),
        # D tanh, D multiplies and D adds with w (forward)
        flops = batch * heads * seq * seq * (2 * D if score == "dot" else 4 * D)
        intermediate = batch * heads * seq * seq * (1 if score == "dot" else D) * 4  # float32 bytes, per layer
        facts[score].update(seconds_per_step=seconds[score], score_flops=flops, intermediate_bytes=intermediate)
        rows.append([score, facts[score]["val_loss"], seconds[score] * 1000, flops / 1e6, intermediate / 2 ** 20])
    dot, add = facts["dot"], facts["additive"]
    facts["time_ratio"] = add["seconds_per_step"] / dot["seconds_per_step"]
    facts["memory_ratio"] = add["intermediate_bytes"] / dot["intermediate_bytes"]
    gap = add["val_loss"] - dot["val_loss"]
    quality = (f"about the same loss ({dot['val_loss']:.3f} dot vs {add['val_loss']:.3f} additive)" if abs(gap) < 0.03
               else f"{'a lower' if gap < 0 else 'a higher'} loss with additive scores ({add['val_loss']:.3f} vs "
                    f"{dot['val_loss']:.3f} dot: its tanh adds a little capacity)")
    figure = loss_curves_png(out, "attention-additive", curves, title="dot-product vs additive scores")
    return LabResult(
        ["scores", "val loss", "ms / step", "score MFLOPs / layer (fwd)", "score intermediate MiB / layer"], rows,
        figure=figure, facts=facts,
        conclusion=f"At equal steps the two give {quality}, but additive attention materialises a (T, T, D) "
                   f"tensor {facts['memory_ratio']:.0f}x the dot product's (T, T) scores and costs "
                   f"{facts['time_ratio']:.1f}x the time per step: the dot product is one matmul, which is why "
                   "Transformers use it (scaled by 1/sqrt(d_k), see attention-scaling).")


# ---- how many heads ------------------------------------------------------------------------------
def _byte_llama(hidden: int, seq: int, layers: int = 2, **fields) -> nn.Module:
    """A MiniLlama over bytes (vocabulary 256). Trained with `LLAMA_LR`: at this width the default
    initializer_range (0.02) leaves the model on the unigram plateau for a long time, and a short run
    would measure only when it leaves it."""
    from minillama.model import MiniLlama, ModelConfig

    fields.setdefault("num_attention_heads", 4)
    fields.setdefault("initializer_range", 0.05)
    return MiniLlama(ModelConfig(vocab_size=256, hidden_size=hidden, intermediate_size=hidden * 3,
                                 num_hidden_layers=layers, max_position_embeddings=seq, **fields))


LLAMA_LR = 5e-3


def heads_sweep(out: Path | None, quick: bool) -> LabResult:
    """MiniLlama at a fixed hidden size with 1 to 16 heads (head_dim = hidden / heads): the same
    parameters and FLOPs, only how the width is split. Validation loss after the same steps."""
    steps, batch, seq, hidden = (120, 8, 32, 64) if quick else (300, 8, 64, 64)
    heads = (1, 4, 16) if quick else (1, 2, 4, 8, 16)
    seed = torch.initial_seed()
    rows, losses, models = [], [], {}
    for h in heads:
        torch.manual_seed(seed)
        models[h] = model = _byte_llama(hidden, seq, num_attention_heads=h)
        losses.append(_train_and_eval(model, llama_loss, steps, batch, seq, seed, lr=LLAMA_LR)[1])
    seconds = _step_seconds(models, llama_loss, batch, seq, rounds=2)
    for h, loss in zip(heads, losses):
        rows.append([h, hidden // h, sum(p.numel() for p in models[h].parameters()), loss, seconds[h] * 1000])
    best = heads[losses.index(min(losses))]
    inside = 0 < heads.index(best) < len(heads) - 1
    figure = _plot_heads(out, heads, losses, hidden)
    return LabResult(
        ["heads", "head_dim", "parameters", "val loss", "ms / step"], rows, figure=figure,
        facts={"heads": list(heads), "val_loss": losses, "best": best},
        conclusion=(f"Not monotone: at hidden {hidden} the loss is lowest with {best} heads (head_dim "
                    f"{hidden // best}); one head can look at only one mixture of positions, and very many heads are "
                    f"each too narrow (head_dim {hidden // heads[-1]}) to score well, at the same parameters and FLOPs."
                    if inside else f"Here the loss is lowest at {best} heads, an end of the sweep: no sweet spot "
                    "inside this range at this budget."))


def _plot_heads(out: Path | None, heads, losses, hidden) -> Path | None:
    def draw(plt):
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
        ax.plot(heads, losses, "o-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(heads, [f"{h}\n(d={hidden // h})" for h in heads])
        ax.set_xlabel("heads (head_dim)")
        ax.set_ylabel("validation loss (nats/byte)")
        ax.set_title(f"hidden size {hidden}, same steps")
        ax.grid(alpha=0.3)
        return fig

    return figure_png(out, "attention-heads", draw)


# ---- dropout ---------------------------------------------------------------------------------
def dropout_placement(out: Path | None, quick: bool) -> LabResult:
    """A small byte-level LM on a tiny training set (so it overfits), with no dropout, dropout on the
    attention weights, on the residual branches, or both: training and validation loss; and two
    forward passes of each in train mode (different: a new mask each time) and in eval mode (equal).
    Inverted dropout divides the kept values by 1 - p so that E[dropout(x)] = x, what eval mode passes."""
    steps, batch, seq, dim, size = (200, 8, 32, 48, 2_000) if quick else (400, 16, 32, 64, 4_000)
    p = 0.2
    data = story_bytes("train", size)  # a few KB: the model can overfit it
    probe = next(_windows("val", 4, seq, 99))[0]
    settings = {"none": (0.0, 0.0), "attention weights": (p, 0.0), "residual branches": (0.0, p), "both": (p, p)}
    if quick:
        settings = {name: settings[name] for name in ("none", "both")}
    seed = torch.initial_seed()
    rows, facts, curves = [], {}, {}
    for name, (attn_p, resid_p) in settings.items():
        torch.manual_seed(seed)
        model = TinyLM(dim, 4, layers=2, seq=seq, resid_dropout=resid_p, attn_dropout=attn_p)
        losses, val = _train_and_eval(model, lm_loss, steps, batch, seq, seed, train_data=data, eval_batches=16)
        train = mean_loss(model, lm_loss, _windows("train", batch, seq, 4321, data), 16)  # eval mode, like val
        with torch.no_grad():
            model.train()
            train_diff = (model(probe) - model(probe)).abs().max().item()
            model.eval()
            eval_diff = (model(probe) - model(probe)).abs().max().item()
        facts[name] = {"train_loss": train, "val_loss": val, "train_mode_diff": train_diff, "eval_mode_diff": eval_diff}
        curves[name] = losses
        rows.append([name, train, val, val - train, train_diff, eval_diff])
    # Inverted dropout: E[dropout(x)] = x, so nothing needs rescaling at inference.
    x = torch.ones(1_000_000)
    kept = F.dropout(x, p, training=True)
    facts["inverted_mean"] = kept.mean().item()  # ≈ 1: the kept values are scaled by 1 / (1 - p)
    facts["unscaled_mean"] = (kept != 0).float().mean().item()  # ≈ 1 - p without that scaling
    best = min(settings, key=lambda name: facts[name]["val_loss"])
    none = facts["none"]
    figure = loss_curves_png(out, "attention-dropout", curves, title=f"{size / 1000:g} KB of text, p={p}")
    return LabResult(
        ["dropout on", "train loss", "val loss", "gap", "train mode: max |Δ| of 2 passes", "eval mode: max |Δ|"],
        rows, figure=figure, facts={"p": p, "best": best, **facts},
        conclusion=f"Dropout makes train-mode outputs random (two passes differ) and is the identity in eval mode "
                   f"(they agree exactly); inverted dropout scales kept values by 1/(1-p) so the mean is unchanged "
                   f"(E = {facts['inverted_mean']:.3f} vs {facts['unscaled_mean']:.3f} unscaled), which is why "
                   f"inference can simply switch it off. On {size / 1000:g} KB of text the model without dropout "
                   f"overfits (validation - training loss {none['val_loss'] - none['train_loss']:.2f}); the lowest "
                   f"validation loss is with dropout on {best} ({facts[best]['val_loss']:.3f} vs "
                   f"{none['val_loss']:.3f} without).")


# ---- q/k/v biases ------------------------------------------------------------------------------
def _biased_attention(x: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor, heads: int,
                      rope: bool) -> torch.Tensor:
    """Causal attention of x (B, T, C) with q/k/v = x W_i^T + b_i (weights (3, C, C), biases (3, C)),
    through the model's own `eager_attention` (and `apply_rotary` when `rope`). -> (B, H, T, D)"""
    from minillama.model import ModelConfig
    from minillama.model.llama import RotaryEmbedding, apply_rotary, eager_attention

    B, T, C = x.shape
    q, k, v = (F.linear(x, w, b).view(B, T, heads, C // heads).transpose(1, 2) for w, b in zip(weights, biases))
    if rope:
        config = ModelConfig(vocab_size=2, hidden_size=C, intermediate_size=2, num_hidden_layers=1,
                             num_attention_heads=heads, max_position_embeddings=T)
        cos, sin = RotaryEmbedding(config)(torch.arange(T)[None], torch.float32)
        q, k = apply_rotary(q, cos.to(x.dtype), sin.to(x.dtype)), apply_rotary(k, cos.to(x.dtype), sin.to(x.dtype))
    return eager_attention(q, k, v, None, causal=True)


def qkv_bias(out: Path | None, quick: bool) -> LabResult:
    """Part 1, exact: add a random bias to q, k or v alone and compare the attention output with the
    bias-free one (float64 inputs). A key bias adds q_t·b_k to every score of query t, the same for every key,
    and softmax ignores a constant per row: without RoPE it changes nothing. With RoPE the bias is
    rotated by each key's position, so it is no longer constant. A value bias adds b_v to the output
    (the weights sum to 1). Part 2: MiniLlama with q/k/v biases (`attention_bias`), trained from the
    model's zero biases and from random biases (std 0.5), same steps."""
    steps, batch, seq, hidden = (100, 8, 32, 64) if quick else (300, 8, 64, 64)
    seed = torch.initial_seed()
    generator = torch.Generator().manual_seed(seed)
    C, heads = 64, 4
    x = torch.randn(2, 16, C, generator=generator, dtype=torch.float64)
    weights = torch.randn(3, C, C, generator=generator, dtype=torch.float64) / math.sqrt(C)
    rows, facts = [], {"no_rope": {}, "rope": {}}
    for i, name in enumerate("qkv"):
        biases = torch.zeros(3, C, dtype=torch.float64)
        biases[i] = torch.randn(C, generator=generator, dtype=torch.float64)
        for rope in (False, True):
            plain = _biased_attention(x, weights, torch.zeros_like(biases), heads, rope)
            biased = _biased_attention(x, weights, biases, heads, rope)
            facts["rope" if rope else "no_rope"][name] = (biased - plain).abs().max().item()
        rows.append([f"random {name} bias only", facts["no_rope"][name], facts["rope"][name], "-"])
    curves = {}
    for init in ("zeros", "random"):
        torch.manual_seed(seed)
        model = _byte_llama(hidden, seq, attention_bias=True)
        if init == "random":
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if name.endswith("_proj.bias"):
                        parameter.normal_(0.0, 0.5)
        losses, val = _train_and_eval(model, llama_loss, steps, batch, seq, seed, lr=LLAMA_LR)
        facts[f"val_loss_{init}"] = val
        curves[f"q/k/v biases from {init}"] = losses
        rows.append([f"train, q/k/v biases from {init}", "-", "-", val])
    figure = loss_curves_png(out, "attention-bias", curves, title="MiniLlama with attention_bias")
    zeros, random = facts["val_loss_zeros"], facts["val_loss_random"]
    return LabResult(
        ["bias", "max |Δ output| (no positions)", "max |Δ output| (RoPE)", "val loss"], rows,
        figure=figure, facts=facts,
        conclusion=f"Without positions in q·k a key bias changes nothing (max |Δ| {facts['no_rope']['k']:.0e}, float32 "
                   f"rounding: softmax ignores the constant q·b_k added to a whole row), while q and v biases do "
                   f"(|Δ| {facts['no_rope']['q']:.2f}, {facts['no_rope']['v']:.2f}); with RoPE the key bias is rotated "
                   f"by each key's position and does matter (|Δ| {facts['rope']['k']:.2f}). For training, "
                   + (f"random biases (std 0.5) start the model off-centre and are still behind after the same steps "
                      f"({random:.3f} vs {zeros:.3f} from zero): start them at zero, as the model does."
                      if random > zeros + 0.03 else
                      f"zero and random (std 0.5) biases end close after the same steps ({zeros:.3f} vs {random:.3f}): "
                      "zero is the convention because it starts the model as if it had no biases."))


# ---- attention's cost ------------------------------------------------------------------------
class _LargestTensor:
    """Records the largest tensor any torch operation creates while active (bytes): what an attention
    implementation materialises, whatever its code looks like."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        record = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                result = func(*args, **(kwargs or {}))
                for value in torch.utils._pytree.tree_leaves(result):
                    if isinstance(value, torch.Tensor):
                        record.bytes = max(record.bytes, value.numel() * value.element_size())
                return result

        self.bytes, self.mode = 0, Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def _fit_exponent(xs, ys) -> float:
    """The slope of log y against log x (least squares): y ∝ x^slope."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _best_seconds(fn, args: tuple, rounds: int) -> float:
    fn(*args)  # warm-up
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def attention_cost(out: Path | None, quick: bool) -> LabResult:
    """Causal attention of one sequence (4 heads of 32) at growing length T, three ways: the model's
    `eager_attention` (builds the (T, T) scores), torch's SDPA, and FlashAttention written out in
    PyTorch (model/flash.py: (64 x 64) tiles). Forward time (best of a few, same run), the largest
    tensor each creates, and the matmul FLOPs (4 H T^2 D, all three compute every score)."""
    from minillama.model.flash import flash_attention
    from minillama.model.llama import eager_attention, sdpa_attention

    lengths = (64, 128, 256, 512) if quick else (128, 256, 512, 1024, 2048)
    H, D = 4, 32
    ways = {"eager": eager_attention, "sdpa": sdpa_attention,
            "flash (tiled)": lambda q, k, v, mask, causal: flash_attention(q, k, v, mask, causal)}
    facts = {name: {"seconds": [], "bytes": []} for name in ways}
    facts["flops"] = []
    rows = []
    for T in lengths:
        q, k, v = torch.randn(3, 1, H, T, D).unbind(0)
        row = [T]
        for name, attend in ways.items():
            with _LargestTensor() as largest:
                attend(q, k, v, None, True)
            rounds = 1 if name == "flash (tiled)" else 3
            seconds = _best_seconds(attend, (q, k, v, None, True), rounds)
            facts[name]["seconds"].append(seconds)
            facts[name]["bytes"].append(largest.bytes)
            row += [seconds * 1000, largest.bytes / 2 ** 20]
        facts["flops"].append(4 * H * T * T * D)
        rows.append(row + [facts["flops"][-1] / 1e6])
    # exponents over the longer half of the lengths, where the T^2 terms dominate fixed costs (and
    # the (64 x 64) tiles are no longer the largest tensor)
    half = len(lengths) // 2
    for name in ways:
        facts[name]["time_exponent"] = _fit_exponent(lengths[half:], facts[name]["seconds"][half:])
        facts[name]["memory_exponent"] = _fit_exponent(lengths[half:], facts[name]["bytes"][half:])
    facts["flops_exponent"] = _fit_exponent(lengths, facts["flops"])
    facts["lengths"] = list(lengths)
    figure = _plot_cost(out, lengths, facts, ways)
    eager, flash = facts["eager"], facts["flash (tiled)"]
    return LabResult(
        ["T"] + [f"{what} ({name})" for name in ways for what in ("ms", "largest MiB")] + ["MFLOPs"], rows,
        figure=figure, facts=facts,
        conclusion=f"Attention's work is quadratic: FLOPs grow as T^{facts['flops_exponent']:.1f} and the eager "
                   f"time as T^{eager['time_exponent']:.1f} (SDPA T^{facts['sdpa']['time_exponent']:.1f}); eager "
                   f"attention's largest tensor, the (T, T) scores, grows as T^{eager['memory_exponent']:.1f}, while "
                   f"FlashAttention's tiles keep memory linear (T^{flash['memory_exponent']:.1f}) but not the work: it "
                   f"still computes every score (its time here grows as T^{flash['time_exponent']:.1f}).")


def _plot_cost(out: Path | None, lengths, facts, ways) -> Path | None:
    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
        for name in ways:
            axes[0].plot(lengths, [s * 1000 for s in facts[name]["seconds"]], "o-", label=name)
            axes[1].plot(lengths, [b / 2 ** 20 for b in facts[name]["bytes"]], "o-", label=name)
        for ax, label in zip(axes, ("forward time (ms)", "largest tensor created (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend()
        return fig

    return figure_png(out, "attention-cost", draw)


# ---- one projection for Q, K and V --------------------------------------------------------------
@torch.no_grad()
def _self_attention_stats(model: TinyLM, inputs: torch.Tensor) -> dict[str, float]:
    """Over every layer and head: how far the raw scores are from symmetric (||S - S^T|| / ||S||), the
    share of queries (beyond the first position) whose largest weight is on themselves, and the mean
    weight on themselves."""
    model.eval()
    for attn in model.attns:
        attn.keep = True
    model(inputs)
    asym, argmax_self, weight_self = [], [], []
    for attn in model.attns:
        attn.keep = False
        S, W = attn.scores, attn.weights[..., 1:, :]  # (B, H, T, T); queries 1.. (query 0 sees only itself)
        asym.append(((S - S.transpose(-1, -2)).norm() / S.norm()).item())
        diagonal = W.diagonal(offset=1, dim1=-2, dim2=-1)  # weight of query t on key t
        argmax_self.append((W.argmax(-1) == torch.arange(1, S.shape[-1])).float().mean().item())
        weight_self.append(diagonal.mean().item())
    n = len(model.attns)
    return {"asymmetry": sum(asym) / n, "argmax_self": sum(argmax_self) / n, "weight_self": sum(weight_self) / n}


def shared_qkv(out: Path | None, quick: bool) -> LabResult:
    """The byte-level LM with separate W_q, W_k, W_v and with one W for all three (Q = K = V = xW):
    symmetry of the scores and attention on oneself, at initialisation and after training, and the
    validation loss after the same steps."""
    steps, batch, seq, dim = (200, 8, 32, 48) if quick else (400, 16, 32, 64)
    seed = torch.initial_seed()
    probe = next(_windows("val", 8, seq, 99))[0]
    uniform = sum(1 / (t + 1) for t in range(1, seq)) / (seq - 1)  # mean weight on self if attention were flat
    rows, facts, curves = [], {}, {}
    for shared in (False, True):
        name = "Q = K = V = xW" if shared else "separate W_q, W_k, W_v"
        torch.manual_seed(seed)
        model = TinyLM(dim, 4, layers=2, seq=seq, shared_qkv=shared)
        at_init = _self_attention_stats(model, probe)
        curves[name], val = _train_and_eval(model, lm_loss, steps, batch, seq, seed)
        trained = _self_attention_stats(model, probe)
        key = "shared" if shared else "separate"
        facts[key] = {"init": at_init, "trained": trained, "val_loss": val,
                      "parameters": sum(p.numel() for p in model.parameters())}
        rows.append([name, facts[key]["parameters"], at_init["asymmetry"], at_init["argmax_self"],
                     trained["asymmetry"], trained["argmax_self"], trained["weight_self"], val])
    facts["uniform_weight_self"] = uniform
    sep, sh = facts["separate"], facts["shared"]
    figure = loss_curves_png(out, "attention-shared-qkv", curves, title="separate vs shared Q/K/V projection")
    return LabResult(
        ["projections", "parameters", "asymmetry (init)", "argmax = self (init)", "asymmetry (trained)",
         "argmax = self (trained)", "weight on self (trained)", "val loss"], rows, figure=figure, facts=facts,
        conclusion=f"With Q = K the score matrix is symmetric (asymmetry {sh['trained']['asymmetry']:.0e}) and "
                   f"q_t·q_t = |q_t|^2 tops the row: {sh['init']['argmax_self']:.0%} of tokens attend most to "
                   f"themselves at initialisation and {sh['trained']['argmax_self']:.0%} after training (separate "
                   f"projections: {sep['trained']['argmax_self']:.0%}), so 'look at another token' is hard to "
                   f"express; the loss after the same steps is "
                   f"{'worse' if sh['val_loss'] > sep['val_loss'] else 'not worse'} "
                   f"({sh['val_loss']:.3f} vs {sep['val_loss']:.3f}).")


# ---- depth on the sentiment task ----------------------------------------------------------------
class StackedSentiment(nn.Module):
    """The seed's sentiment model (examples/attention_sentiment.py: word embeddings -> self-attention
    without biases, dropout on the weights -> mean over the words -> linear) with `layers` attention
    layers, each fed the previous one's output, or added to it (`residual`). ids (B, T), 0 = padding
    -> logits (B, 2)."""

    def __init__(self, vocab_size: int, layers: int = 1, residual: bool = False, dim: int = 64, heads: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.residual = residual
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.attentions = nn.ModuleList(nn.MultiheadAttention(dim, heads, dropout=dropout, bias=False,
                                                              batch_first=True) for _ in range(layers))
        self.classify = nn.Linear(dim, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        padding = ids == 0  # (B, T)
        x = self.embed(ids)  # (B, T, C)
        for attention in self.attentions:
            y, _ = attention(x, x, x, key_padding_mask=padding, need_weights=False)
            x = x + y if self.residual else y
        keep = (~padding).unsqueeze(-1).float()
        return self.classify((x * keep).sum(1) / keep.sum(1))  # mean over the real words


def _sentiment_batches(ids: torch.Tensor, labels: torch.Tensor, batch: int, generator: torch.Generator):
    while True:
        rows = torch.randint(0, len(ids), (batch,), generator=generator)
        width = int((ids[rows] != 0).sum(1).max())
        yield ids[rows, :width], labels[rows]


def _classify_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def sentiment_depth(out: Path | None, quick: bool) -> LabResult:
    """The seed's one-layer attention sentiment model against 2 and 4 stacked layers (plain, as in the
    seed, and with residual connections), each trained for the same steps on SST-2: dev accuracy."""
    from minillama.finetune.classify import sst2_word_ids, sst2_word_vocab

    steps, batch = (80, 32) if quick else (150, 32)
    variants = [(1, False), (4, False)] if quick else [(1, False), (2, False), (4, False), (4, True)]
    seed = torch.initial_seed()
    vocab = sst2_word_vocab()
    train_ids, train_labels = sst2_word_ids("train", vocab)
    dev_ids, dev_labels = sst2_word_ids("dev", vocab)
    rows, facts = [], {}
    for layers, residual in variants:
        name = f"{layers} layer{'s' if layers > 1 else ''}" + (" + residual" if residual else "")
        torch.manual_seed(seed)
        model = StackedSentiment(len(vocab) + 2, layers, residual)
        batches = _sentiment_batches(train_ids, train_labels, batch, torch.Generator().manual_seed(seed))
        start = time.perf_counter()
        losses = fit(model, _classify_loss, batches, steps, lr=3e-3, weight_decay=0.01)
        seconds = (time.perf_counter() - start) / steps
        with torch.no_grad():
            accuracy = (model(dev_ids).argmax(-1) == dev_labels).float().mean().item()
        final = sum(losses[-50:]) / len(losses[-50:])
        facts[name] = {"layers": layers, "residual": residual, "dev_accuracy": accuracy, "train_loss": final}
        rows.append([name, sum(p.numel() for p in model.parameters()), final, accuracy, seconds * 1000])
    one, plain4 = facts["1 layer"]["dev_accuracy"], facts["4 layers"]["dev_accuracy"]
    accs = [f["dev_accuracy"] for f in facts.values()]
    best_deeper = max((name for name in facts if name != "1 layer"), key=lambda name: facts[name]["dev_accuracy"])
    deeper = facts[best_deeper]["dev_accuracy"]
    slowest = max(row[-1] for row in rows) / rows[0][-1]
    return LabResult(
        ["model", "parameters", "train loss (last 50 steps)", "dev accuracy", "ms / step"], rows, facts=facts,
        conclusion=f"Not here: after the same {steps} steps one layer reaches {one:.3f} dev accuracy and the best "
                   f"of the deeper ones {deeper:.3f} ({best_deeper}), within noise (872 dev sentences: ±0.016), at "
                   f"up to {slowest:.1f}x the time per step; bare stacked attention (4 layers: {plain4:.3f}) "
                   f"{'is the worst' if plain4 == min(accs) else 'is not better'}. Which words occur carries most of "
                   "SST-2's sentiment, and this model has no positions and no MLP, so depth buys cost, not accuracy.")


# ---- MHA, GQA, MQA -----------------------------------------------------------------------------
@torch.no_grad()
def _decode_speed(model: nn.Module, batch: int, context: int, new: int, rounds: int = 2) -> tuple[float, int]:
    """Greedy decoding with the model's KV cache (`generate.prefill` / `decode_one_token`): `batch` rows
    of `context` prompt tokens, then `new` tokens. Returns (decode tokens per second, the best of
    `rounds`; the cache's bytes per token)."""
    from minillama.generate import decode_one_token, new_cache, prefill

    model.eval()
    prompt = torch.randint(0, 256, (batch, context), generator=torch.Generator().manual_seed(5))
    best = float("inf")
    for _ in range(rounds):
        cache = new_cache(model, batch, context + new)
        token = prefill(model, prompt, cache).argmax(-1, keepdim=True)  # (B, 1)
        start = time.perf_counter()
        for step in range(new):
            position = torch.full((batch, 1), context + step)
            token = decode_one_token(model, token, position, cache).argmax(-1, keepdim=True)
        best = min(best, time.perf_counter() - start)
    cache_bytes = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    return batch * new / best, cache_bytes // (batch * cache.max_seq_len)


@torch.no_grad()
def _one_token_step(batch: int, heads: int, kv_heads: int, context: int, head_dim: int,
                    rounds: int) -> dict[str, float]:
    """The model's attention for one decoding step (`eager_attention`, what `sdpa` runs when T == 1)
    on a cache of `context` keys: the largest tensor it creates and the best time of `rounds`."""
    from minillama.model.llama import eager_attention

    generator = torch.Generator().manual_seed(11)
    q = torch.randn(batch, heads, 1, head_dim, generator=generator)
    k, v = torch.randn(2, batch, kv_heads, context, head_dim, generator=generator).unbind(0)
    with _LargestTensor() as largest:
        eager_attention(q, k, v, None, False)
    return {"step_largest_bytes": largest.bytes,
            "step_seconds": _best_seconds(lambda: eager_attention(q, k, v, None, False), (), rounds)}


def kv_heads(out: Path | None, quick: bool) -> LabResult:
    """MiniLlama with 8 query heads and 8 (MHA), 2 (GQA) or 1 (MQA) key/value heads
    (`num_key_value_heads`), trained for the same steps on bytes: validation loss, KV-cache bytes per
    token (read off the real `KVCache`), and greedy decoding speed with that cache, measured in turns."""
    steps, batch, seq, hidden = (100, 8, 32, 64) if quick else (300, 8, 64, 64)
    decode_batch, context, new = (8, 32, 8) if quick else (32, 448, 32)
    seed = torch.initial_seed()
    kinds = {"MHA": 8, "GQA": 2, "MQA": 1}
    rows, facts, curves, models = [], {}, {}, {}
    for name, kv in kinds.items():
        torch.manual_seed(seed)
        models[name] = model = _byte_llama(hidden, context + new, num_attention_heads=8, num_key_value_heads=kv)
        curves[f"{name} ({kv} kv heads)"], val = _train_and_eval(model, llama_loss, steps, batch, seq, seed,
                                                                 lr=LLAMA_LR)
        facts[name] = {"kv_heads": kv, "val_loss": val, "parameters": sum(p.numel() for p in model.parameters()),
                       "tokens_per_second": 0.0}
    for _ in range(2):  # in turns, so that load from other processes falls on all of them alike
        for name, model in models.items():
            speed, facts[name]["cache_bytes_per_token"] = _decode_speed(model, decode_batch, context, new, rounds=1)
            facts[name]["tokens_per_second"] = max(facts[name]["tokens_per_second"], speed)
    for _ in range(2):  # one decoding step's attention alone, in turns
        for f in facts.values():
            step = _one_token_step(decode_batch, 8, f["kv_heads"], context + new, hidden // 8, rounds=10)
            for key, value in step.items():
                f[key] = min(f.get(key, value), value)
    for name, f in facts.items():
        rows.append([name, f["kv_heads"], f["parameters"], f["val_loss"], f["cache_bytes_per_token"],
                     f["tokens_per_second"], f["step_largest_bytes"] / 2 ** 10, f["step_seconds"] * 1e6])
    mha, mqa, gqa = facts["MHA"], facts["MQA"], facts["GQA"]
    title = "8 query heads, 8 / 2 / 1 key-value heads"
    figure = loss_curves_png(out, "attention-kv-heads", curves, title=title)
    return LabResult(
        ["attention", "kv heads", "parameters", "val loss", "KV cache bytes / token", "decode tokens / s",
         "one-token attention: largest KiB", "µs"], rows,
        figure=figure, facts=facts,
        conclusion=f"The KV cache shrinks with the key/value heads ({mha['cache_bytes_per_token']} -> "
                   f"{gqa['cache_bytes_per_token']} -> {mqa['cache_bytes_per_token']} bytes per token for MHA -> GQA "
                   f"-> MQA) while the loss after the same steps moves little ({mha['val_loss']:.3f} / "
                   f"{gqa['val_loss']:.3f} / {mqa['val_loss']:.3f}). A decoding step's attention reads every "
                   "cached key once per key head, so its largest tensor falls with them "
                   f"({mha['step_largest_bytes'] // 1024} -> {gqa['step_largest_bytes'] // 1024} -> "
                   f"{mqa['step_largest_bytes'] // 1024} KiB) and it runs "
                   f"{mha['step_seconds'] / mqa['step_seconds']:.1f}x as fast for MQA as for MHA; whole decoding of "
                   f"{decode_batch} rows at {context} tokens of context, where the projections and MLP cost the same, "
                   f"runs {gqa['tokens_per_second'] / mha['tokens_per_second']:.2f}x / "
                   f"{mqa['tokens_per_second'] / mha['tokens_per_second']:.2f}x as fast.")

EXPERIMENTS = (
    Experiment("attention-scaling", "attention",
               "Why scale q·k by 1/sqrt(d_k), and must it be sqrt(d_k)?", attention_scaling),
    Experiment("attention-additive", "attention",
               "Multiplicative (dot-product) or additive (Bahdanau) attention: which is better, and cheaper?",
               additive_attention),
    Experiment("attention-heads", "attention",
               "Are more heads always better at a fixed hidden size?", heads_sweep),
    Experiment("attention-dropout", "attention",
               "Where does dropout go in attention, and why is it off at inference?", dropout_placement),
    Experiment("attention-bias", "attention",
               "How should the q/k/v biases be initialised, and does the key bias do anything?", qkv_bias),
    Experiment("attention-cost", "attention",
               "What are attention's weaknesses: how do its time and memory grow with length?", attention_cost),
    Experiment("attention-shared-qkv", "attention",
               "Can Q, K and V share one projection, and what breaks if they do?", shared_qkv),
    Experiment("attention-depth", "attention",
               "Is deeper better: one attention layer or several on the sentiment task?", sentiment_depth),
    Experiment("attention-kv-heads", "attention",
               "MHA, GQA or MQA: what do fewer key/value heads save, and what do they cost?", kv_heads),
)
