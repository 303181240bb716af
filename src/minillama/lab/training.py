"""Training and counting questions: parameter counts, LoRA, initialisation, the SFT mask, teacher forcing,
speculative decoding, ZeRO memory, length extrapolation and weight quantization.

Each answer runs the project's own code where the question is about it (MiniLlama, finetune/lora.py,
render_chat, MiniSeq2Seq, speculative_generate, the trainer's Distributed, train/extrapolation.py,
quant/) and compares with real references where there are some (transformers, peft). Most use a
byte-level `debug` MiniLlama trained for a few hundred steps on the shipped stories."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from minillama.errors import MiniLlamaError
from minillama.lab.common import figure_png, fit, llama_loss, mean_loss, random_windows, story_bytes
from minillama.lab.registry import Experiment, LabResult
from minillama.model import MiniLlama, ModelConfig


# ---- shared: a small byte-level MiniLlama trained for a few steps on the shipped stories ------------
def byte_config(**overrides) -> ModelConfig:
    """The `debug` preset (vocabulary 256 = bytes, 2 layers, width 64), any field overridden."""
    return ModelConfig.from_preset("debug", **overrides)


def lab_seed() -> int:
    """The seed `run_experiment` (`minillama lab --seed`) gave torch, for the experiment's own generators."""
    return torch.initial_seed() % 2**31


def story_batches(batch: int, seq: int, seed: int | None = None):
    """Endless (inputs, targets) byte windows of the shipped training stories."""
    seed = lab_seed() if seed is None else seed
    return random_windows(story_bytes("train", 400_000), batch, seq, seed)


def trained_byte_model(steps: int, seq: int = 64, batch: int = 16, **overrides) -> MiniLlama:
    """A `byte_config(**overrides)` MiniLlama after `steps` AdamW steps on the shipped stories."""
    model = MiniLlama(byte_config(**overrides), init=False)
    model.init_weights(torch.Generator().manual_seed(lab_seed()))
    fit(model, llama_loss, story_batches(batch, seq), steps, lr=3e-3)
    return model


def held_out(seq: int = 64, batch: int = 16, count: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of validation batches, so every model in an experiment is measured on the same text."""
    windows = random_windows(story_bytes("val", 200_000), batch, seq, seed)
    return [next(windows) for _ in range(count)]


# ---- 1. parameter count ----------------------------------------------------------------------------
def llama_parameter_formula(vocab: int, hidden: int, intermediate: int, layers: int, heads: int,
                            kv_heads: int, head_dim: int, tied: bool, qkv_bias: bool = False) -> dict[str, int]:
    """LLaMA's parameters by hand: embedding V·C; per layer attention C·H·D (q) + 2·C·K·D (k, v, GQA)
    + H·D·C (o) [+ (H + 2K)·D biases, Qwen2], SwiGLU 3·C·I, two RMSNorm weights 2·C; a final norm C;
    an untied head V·C."""
    C, H, K, D = hidden, heads, kv_heads, head_dim
    attention = C * H * D + 2 * C * K * D + H * D * C + ((H + 2 * K) * D if qkv_bias else 0)
    mlp, norms = 3 * C * intermediate, 2 * C
    parts = {"embeddings": vocab * C, "attention": layers * attention, "mlp": layers * mlp,
             "norms": layers * norms + C, "head": 0 if tied else vocab * C}
    return {**parts, "total": sum(parts.values())}


def gpt2_parameter_formula(vocab: int, positions: int, hidden: int, layers: int) -> dict[str, int]:
    """GPT-2's parameters by hand: token V·C + learned positions P·C; per layer attention
    C·3C + 3C (c_attn, with bias) + C·C + C (c_proj), MLP C·4C + 4C + 4C·C + C, two LayerNorms 2·2C
    (weight and bias); a final LayerNorm 2C; the head is tied to the token embedding (0)."""
    C = hidden
    attention = C * 3 * C + 3 * C + C * C + C
    mlp = C * 4 * C + 4 * C + 4 * C * C + C
    parts = {"embeddings": vocab * C + positions * C, "attention": layers * attention, "mlp": layers * mlp,
             "norms": layers * 4 * C + 2 * C, "head": 0}
    return {**parts, "total": sum(parts.values())}


# name -> LlamaConfig-style shape (LLaMA-7B: Touvron et al. 2023; Llama-3-8B: GQA with 8 KV heads)
LLAMA_SHAPES = {
    "LLaMA-7B": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    "Llama-3-8B (GQA)": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
}
GPT2_SHAPES = {"GPT-2 124M": dict(n_embd=768, n_layer=12, n_head=12),
               "GPT-2 355M": dict(n_embd=1024, n_layer=24, n_head=16)}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def _installed(*modules: str) -> bool:
    """Whether the optional references (transformers, peft: `pip install minillama[dev]`) are there."""
    import importlib.util

    return all(importlib.util.find_spec(module) is not None for module in modules)


def parameter_count(out: Path | None, quick: bool) -> LabResult:
    """Count by formula, then build the real models on the meta device (shapes, no memory, no
    download) and count their tensors: transformers' GPT2LMHeadModel / LlamaForCausalLM and our MiniLlama."""
    from minillama.model import PRESETS

    if not _installed("transformers"):
        raise MiniLlamaError("parameter-count compares against transformers' models: pip install transformers")
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    rows, facts, shares = [], {}, {}
    for name, shape in GPT2_SHAPES.items():
        hf = GPT2Config(**shape)  # vocab 50257, 1024 learned positions, tied head
        formula = gpt2_parameter_formula(hf.vocab_size, hf.n_positions, hf.n_embd, hf.n_layer)
        with torch.device("meta"):
            reference = _count(GPT2LMHeadModel(hf))
        facts[name] = {"formula": formula["total"], "ours": None, "transformers": reference}
        shares[name] = formula
        rows.append([name, formula["embeddings"], formula["attention"], formula["mlp"], formula["norms"],
                     formula["head"], formula["total"], "-", reference, formula["total"] == reference])
    presets = ("stories15M", "tiny") if quick else ("stories15M", "stories110M", "tiny", "tinyllm")
    shapes = {**LLAMA_SHAPES, **{name: PRESETS[name] for name in presets}}
    for name, shape in shapes.items():
        config = ModelConfig(**shape)
        formula = llama_parameter_formula(config.vocab_size, config.hidden_size, config.intermediate_size,
                                          config.num_hidden_layers, config.num_attention_heads,
                                          config.num_key_value_heads, config.head_dim, config.tie_word_embeddings)
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "tie_word_embeddings")
        hf = LlamaConfig(**{key: getattr(config, key) for key in keys})
        with torch.device("meta"):
            ours = MiniLlama(config, init=False).num_parameters()
            reference = _count(LlamaForCausalLM(hf))
        facts[name] = {"formula": formula["total"], "ours": ours, "transformers": reference}
        shares[name] = formula
        rows.append([name, formula["embeddings"], formula["attention"], formula["mlp"], formula["norms"],
                     formula["head"], formula["total"], ours, reference,
                     formula["total"] == ours == reference])
    figure = figure_png(out, "parameter-count", lambda plt: _draw_shares(plt.figure(figsize=(8, 4), dpi=110), shares))
    return LabResult(
        ["model", "embeddings", "attention", "MLP", "norms", "head (untied)", "formula", "MiniLlama (meta)",
         "transformers (meta)", "equal"], rows, figure=figure, facts=facts,
        conclusion="The hand formula equals the real count for every shape (GPT-2 124M is 124,439,808 with its "
                   "tied head; LLaMA-7B is 6,738,415,616): big models are mostly MLP and attention "
                   "(12·L·C² for GPT-2), while in small ones like stories15M the embedding is a large share.")


def _draw_shares(fig, shares: dict[str, dict[str, int]]):
    ax = fig.add_subplot(1, 1, 1)
    names = list(shares)
    left = [0.0] * len(names)
    for part in ("embeddings", "head", "attention", "mlp", "norms"):
        widths = [shares[n][part] / shares[n]["total"] for n in names]
        ax.barh(names, widths, left=left, label=part)
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("share of parameters")
    ax.legend(loc="lower right", fontsize=8)
    return fig


# ---- 2. LoRA ------------------------------------------------------------------------------------
def lora_parameter_formula(config: ModelConfig, r: int, targets: tuple[str, ...]) -> int:
    """r·(d_in + d_out) per adapted matrix (A is r×d_in, B is d_out×r), summed over layers."""
    C, I, H, K, D = (config.hidden_size, config.intermediate_size, config.num_attention_heads,
                     config.num_key_value_heads, config.head_dim)
    shapes = {"q_proj": (C, H * D), "k_proj": (C, K * D), "v_proj": (C, K * D), "o_proj": (H * D, C),
              "gate_proj": (C, I), "up_proj": (C, I), "down_proj": (I, C)}
    return config.num_hidden_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def _peft_trainable(config: ModelConfig, r: int, targets: tuple[str, ...]) -> int | None:
    """The reference: peft's LoRA on transformers' LlamaForCausalLM of the same shape (meta device);
    None when peft is not installed."""
    import warnings

    if not _installed("peft", "transformers"):
        return None

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "tie_word_embeddings")
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API renamed in 5.x
        model = get_peft_model(LlamaForCausalLM(LlamaConfig(**{key: getattr(config, key) for key in keys})),
                               LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    return model.get_nb_trainable_parameters()[0]


def lora(out: Path | None, quick: bool) -> LabResult:
    """Count the adapters of finetune/lora.py against the formula; then, on a trained byte model, show
    that B = 0 leaves the model unchanged while a random B moves the loss, and that the first
    gradient reaches B (A's gradient is B^T·(...) = 0)."""
    from minillama.finetune.lora import LoRAConfig, add_lora, lora_layers, trainable_parameters

    r = 8
    rows, facts = [], {"counts": {}}
    target_sets = {"q,v": ("q_proj", "v_proj"), "q,k,v,o": ("q_proj", "k_proj", "v_proj", "o_proj"),
                   "all 7": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    for shape in ("stories15M", "LLaMA-7B"):
        config = ModelConfig(**LLAMA_SHAPES[shape]) if shape in LLAMA_SHAPES else ModelConfig.from_preset(shape)
        for label, targets in target_sets.items():
            with torch.device("meta"):
                model = MiniLlama(config, init=False)
                add_lora(model, LoRAConfig(r=r, targets=targets))
            trainable, total = trainable_parameters(model)
            formula = lora_parameter_formula(config, r, targets)
            reference = _peft_trainable(config, r, targets)
            facts["counts"][f"{shape} {label}"] = {"formula": formula, "real": trainable, "peft": reference,
                                                   "total": total}
            rows.append([f"{shape}, r={r}, {label}", formula, trainable, reference, trainable / total,
                         formula == trainable and reference in (None, formula)])

    base = trained_byte_model(150, batch=8) if quick else trained_byte_model(300)
    batches = held_out()
    base_loss = mean_loss(base, llama_loss, iter(batches), len(batches))
    with torch.no_grad():
        base_logits = base(batches[0][0]).logits
    adapted = copy.deepcopy(base)
    add_lora(adapted, LoRAConfig(r=r, targets=target_sets["all 7"]))
    with torch.no_grad():
        identical = (adapted(batches[0][0]).logits - base_logits).abs().max().item()
    zero_loss = mean_loss(adapted, llama_loss, iter(batches), len(batches))
    adapted.train()
    llama_loss(adapted, batches[0]).backward()
    grad_a = sum(m.lora_A.weight.grad.norm().item() for m in lora_layers(adapted).values())
    grad_b = sum(m.lora_B.weight.grad.norm().item() for m in lora_layers(adapted).values())
    random_losses = []
    for seed in range(3):
        noisy = copy.deepcopy(base)
        add_lora(noisy, LoRAConfig(r=r, targets=target_sets["all 7"]))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in lora_layers(noisy).values():  # B initialised like A (nn.Linear's default)
                bound = 1 / math.sqrt(r)
                module.lora_B.weight.uniform_(-bound, bound, generator=generator)
        random_losses.append(mean_loss(noisy, llama_loss, iter(batches), len(batches)))
    random_loss = sum(random_losses) / len(random_losses)
    facts.update(base_loss=base_loss, zero_b_loss=zero_loss, zero_b_max_logit_diff=identical,
                 random_b_loss=random_loss, random_b_losses=random_losses, grad_A=grad_a, grad_B=grad_b)
    blank = [""] * 4
    rows += [["byte model: base", *blank, f"loss {base_loss:.4f}"],
             ["+ LoRA (all 7), B = 0", *blank, f"loss {zero_loss:.4f} (largest logit change {identical:.1e})"],
             ["+ LoRA (all 7), B random", *blank, f"loss {random_loss:.4f} (mean of 3 seeds)"],
             ["first gradient (B = 0)", *blank, f"norm dA {grad_a:.1e}, norm dB {grad_b:.3g}"]]
    return LabResult(
        ["adapters", "formula r·(in+out)·L", "finetune/lora.py", "peft (meta)", "trainable fraction",
         "equal / measured"],
        rows, facts=facts,
        conclusion=f"LoRA's count is r·(d_in+d_out) per adapted matrix (all seven of LLaMA-7B's at r=8: "
                   f"{facts['counts']['LLaMA-7B all 7']['real'] / facts['counts']['LLaMA-7B all 7']['total']:.2%} "
                   f"of the weights); with B = 0 the adapted model is the base model exactly (loss "
                   f"{base_loss:.3f} both) and the first gradient reaches B, while a random B jumps the loss to "
                   f"{random_loss:.3f} before any training.")


# ---- 3. initialisation ------------------------------------------------------------------------
def _residual_growth(layers: int, std: float, scaled: bool, inputs: torch.Tensor) -> float:
    """std of the residual stream entering the final norm / std of the embedding, at init. `scaled`:
    MiniLlama's own init_weights (o_proj, down_proj at std / sqrt(2 L)); else every matrix at std."""
    model = MiniLlama(byte_config(num_hidden_layers=layers, initializer_range=std), init=False)
    model.init_weights(torch.Generator().manual_seed(lab_seed()))
    if not scaled:
        with torch.no_grad():
            for name, module in model.named_modules():
                if name.endswith(("o_proj", "down_proj")):
                    module.weight.normal_(0.0, std, generator=torch.Generator().manual_seed(lab_seed() + 1))
    seen = {}
    hook = model.model.norm.register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    with torch.no_grad():
        model(inputs)
        embedded = model.model.embed_tokens(inputs)
    hook.remove()
    return (seen["x"].std() / embedded.std()).item()


def init_std(out: Path | None, quick: bool) -> LabResult:
    """Train the same byte model from Normal(0, std) weights for several std: the initial loss against
    ln(vocab), the gradient at init, the loss after N steps; then the residual stream's growth with
    depth with and without MiniLlama's scaled residual init."""
    stds = (0.002, 0.02, 1.0) if quick else (0.002, 0.02, 0.2, 1.0)
    steps, batch = (150, 8) if quick else (250, 8)
    val = held_out()
    rows, curves, facts = [], {}, {"ln_vocab": math.log(256), "std": list(stds)}
    for std in stds:
        model = MiniLlama(byte_config(initializer_range=std), init=False)
        model.init_weights(torch.Generator().manual_seed(lab_seed()))
        initial = mean_loss(model, llama_loss, iter(val), len(val))
        model.train()
        llama_loss(model, val[0]).backward()
        grad = math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters()))
        model.zero_grad(set_to_none=True)
        curves[std] = fit(model, llama_loss, story_batches(batch, 64), steps, lr=3e-3)
        final = mean_loss(model, llama_loss, iter(val), len(val))
        facts[str(std)] = {"initial": initial, "grad": grad, "final": final}
        rows.append([f"std {std}", initial, grad, final])
    inputs = val[0][0]
    depths = (2, 8) if quick else (2, 8, 32)
    growth = {kind: [_residual_growth(layers, 0.02, kind == "scaled", inputs) for layers in depths]
              for kind in ("scaled", "plain")}
    facts.update(depths=list(depths), residual_growth=growth)
    rows += [[f"{layers} layers, std 0.02: residual std / embedding std", "", "",
              f"{growth['scaled'][i]:.2f} scaled (std/sqrt(2L)) vs {growth['plain'][i]:.2f} plain"]
             for i, layers in enumerate(depths)]
    best = min(stds, key=lambda std: facts[str(std)]["final"])

    def draw(plt):
        fig = plt.figure(figsize=(9, 3.5), dpi=110)
        ax = fig.add_subplot(1, 2, 1)
        for std, losses in curves.items():
            ax.plot(losses, label=f"std {std}")
        ax.axhline(math.log(256), color="gray", ls=":", label="ln(256)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=8)
        ax = fig.add_subplot(1, 2, 2)
        for kind, values in growth.items():
            ax.plot(depths, values, "o-", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("layers")
        ax.set_ylabel("residual std / embedding std (init)")
        ax.legend(fontsize=8)
        return fig

    return LabResult(
        ["init", "initial loss", "gradient norm at init", f"val loss after {steps} steps"], rows,
        figure=figure_png(out, "init-std", draw), facts=facts,
        conclusion=f"Small std starts at ln(256) = {math.log(256):.2f} (uniform predictions) but 0.002 learns "
                   f"slowest (tiny gradients: {facts['0.002']['grad']:.2g}); std 1.0 starts at loss "
                   f"{facts['1.0']['initial']:.1f} and is still behind after {steps} steps (AdamW with clipping "
                   f"keeps it from diverging); the best here is {best} (width 64: 1/sqrt(64) = 0.125), and "
                   f"scaling the residual projections by 1/sqrt(2L) keeps the residual stream's size "
                   f"independent of depth.")


# ---- 4. pretraining vs SFT: the loss mask ------------------------------------------------------
def chat_byte_tokenizer():
    """A byte tokenizer (no merges) with the ChatML special tokens: 259 ids, enough for `render_chat`."""
    from minillama.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer

    return Tokenizer({i: bytes([i]) for i in range(256)}, [], DEFAULT_SPECIAL_TOKENS)


def _sft_loss(model: MiniLlama, batch: dict[str, torch.Tensor], masked: bool) -> torch.Tensor:
    """SFT: the rendered labels (-100 on system/user turns and headers); pretraining-style: every
    real token is a label. The model shifts them (labels unshifted, transformers' convention)."""
    labels = batch["labels"] if masked else batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss


@torch.no_grad()
def _answer_and_prompt_loss(model: MiniLlama, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Mean next-token loss on answer tokens (learned under the mask) and on the other real tokens."""
    import torch.nn.functional as F

    model.eval()
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets, labels = batch["input_ids"][:, 1:], batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    answer = labels != -100
    prompt = (batch["attention_mask"][:, 1:] == 1) & ~answer
    return losses[answer].mean().item(), losses[prompt].mean().item()


def sft_mask(out: Path | None, quick: bool) -> LabResult:
    """GSM8K conversations rendered by the real chat template with the SFT mask (tokenize_conversations
    -> render_chat), batched by the real pad_batch; the same byte model trained the same steps with
    the mask (SFT) and without it (every token, as in pretraining), then measured on held-out
    conversations separately on answer tokens and on prompt tokens."""
    import logging

    from minillama.finetune.batches import ExampleBatches, pad_batch
    from minillama.finetune.sft_data import load_conversations, tokenize_conversations

    tokenizer = chat_byte_tokenizer()
    max_len, steps = (192, 100) if quick else (192, 160)
    train, val = load_conversations("gsm8k")
    logging.getLogger("minillama.finetune.sft_data").setLevel(logging.ERROR)  # "dropped" notes: expected
    examples = tokenize_conversations(tokenizer, train[:1500], max_len)
    val_batch = pad_batch(tokenize_conversations(tokenizer, val[:48], max_len), tokenizer.pad_token_id)
    learned = sum(sum(label != -100 for label in e.labels) for e in examples) / sum(len(e.ids) for e in examples)
    config = byte_config(vocab_size=len(tokenizer), max_position_embeddings=max_len)
    rows, facts, curves = [], {"learned_fraction": learned}, {}
    for name, masked in (("init", None), ("pretraining-style (all tokens)", False), ("SFT (answer only)", True)):
        model = MiniLlama(config, init=False)
        model.init_weights(torch.Generator().manual_seed(lab_seed()))
        if masked is not None:
            batches = ExampleBatches(examples, 8, lambda chunk: pad_batch(chunk, tokenizer.pad_token_id),
                                     seed=lab_seed())
            curves[name] = fit(model, lambda m, b, masked=masked: _sft_loss(m, b, masked), batches, steps)
        answer, prompt = _answer_and_prompt_loss(model, val_batch)
        facts[name] = {"answer": answer, "prompt": prompt}
        rows.append([name, answer, prompt])
    sft, full = facts["SFT (answer only)"], facts["pretraining-style (all tokens)"]
    return LabResult(
        ["trained on", "held-out answer loss", "held-out prompt loss"], rows, facts=facts,
        conclusion=f"The mask changes what is learned: after {steps} equal steps the SFT model's answer loss "
                   f"({sft['answer']:.2f}) is within 0.1 of the all-tokens model's ({full['answer']:.2f}) although "
                   f"only {learned:.0%} of the tokens carry a label, but it is not trained to predict the prompts "
                   f"(prompt loss {sft['prompt']:.2f} vs {full['prompt']:.2f}: it learns them only through what "
                   f"they share with the answers).")


# ---- 5. teacher forcing and the shift ------------------------------------------------------------
def _digit_task(count: int, generator: torch.Generator, length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy translation: source digits -> each digit + 1 (mod 10), then EOS. Ids: 0 pad (and the
    decoder start, as in Marian), 1 EOS, 2..11 the digits. Returns source (n, L), labels (n, L + 1)."""
    source = torch.randint(2, 12, (count, length), generator=generator)
    target = (source - 2 + 1) % 10 + 2
    return source, torch.cat([target, torch.ones(count, 1, dtype=torch.long)], dim=1)


@torch.no_grad()
def _predicts_input(model: MiniLlama, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """How often the most likely next token is the token being read (1.0: the model copies its input)."""
    hits = [(model(inputs).logits.argmax(-1) == inputs).float().mean().item() for inputs, _ in batches]
    return sum(hits) / len(hits)


def teacher_forcing(out: Path | None, quick: bool) -> LabResult:
    """Decoder-only: the same byte model trained with targets shifted by one (inputs = tokens[:-1],
    targets = tokens[1:]) and without the shift (targets = inputs); and the transformers convention
    (labels unshifted, shifted inside the loss) checked equal to the first. Encoder-decoder: the real
    MiniSeq2Seq on a toy digit task, decoder inputs = shift_tokens_right(labels) (decoder_start_token_id
    first) vs decoder inputs = labels; teacher-forced accuracy vs free-running greedy decoding."""
    from minillama.generate.decode import generate
    from minillama.seq2seq.config import config_from_preset
    from minillama.seq2seq.decode import generate_ids
    from minillama.seq2seq.model import MiniSeq2Seq, shift_tokens_right

    rows, facts = [], {}
    # -- decoder-only (MiniLlama), bytes of the shipped stories
    steps = 60 if quick else 200
    val = held_out()
    inputs, targets = val[0]
    prompt = torch.tensor([list(b"Once upon a time, there was a little")])
    for name, shifted in (("decoder-only, targets = tokens[1:]", True), ("decoder-only, targets = inputs", False)):
        model = MiniLlama(byte_config(), init=False)
        model.init_weights(torch.Generator().manual_seed(lab_seed()))
        loss_of = llama_loss if shifted else (lambda m, b: m(b[0], targets=b[0]).loss)
        losses = fit(model, loss_of, story_batches(8, 64), steps)
        next_token = mean_loss(model, llama_loss, iter(val), len(val))
        new = generate(model, prompt, max_new_tokens=48, temperature=0.0, stop_token_ids=())[0, prompt.shape[1]:]
        text = bytes(new.tolist()).decode("utf-8", "replace")
        facts[name] = {"train_loss": sum(losses[-10:]) / 10, "next_token_loss": next_token,
                       "predicts_input": _predicts_input(model, val), "generated": text,
                       "repeats_prompt_end": new.eq(prompt[0, -1]).float().mean().item()}
        rows.append([name, facts[name]["train_loss"], next_token, "-", facts[name]["predicts_input"],
                     repr(text[:32])])
        if shifted:
            with torch.no_grad():  # transformers' convention: unshifted labels, the shift inside the loss
                window = torch.cat([inputs, targets[:, -1:]], dim=1)
                unshifted = model(window, labels=window).loss.item()
                preshifted = model(inputs, targets=targets).loss.item()
            facts["labels_vs_targets_difference"] = abs(unshifted - preshifted)
            rows.append(["  same model, labels unshifted (shift inside the loss)", unshifted, "-", "-", "-",
                         f"loss difference {abs(unshifted - preshifted):.1e}"])
    # -- encoder-decoder (MiniSeq2Seq), digit + 1
    steps = 150 if quick else 300
    test_source, test_labels = _digit_task(256, torch.Generator().manual_seed(lab_seed() + 99))
    for name, shifted in (("enc-dec, decoder inputs = shift_right(labels)", True),
                          ("enc-dec, decoder inputs = labels", False)):
        torch.manual_seed(lab_seed())
        model = MiniSeq2Seq(config_from_preset("debug", vocab_size=12, pad_token_id=0, eos_token_id=1,
                                               decoder_start_token_id=0, dropout=0.0))
        generator = torch.Generator().manual_seed(lab_seed())
        tasks = iter(lambda generator=generator: _digit_task(32, generator), None)
        if shifted:  # forward() shifts: decoder_input_ids = shift_tokens_right(labels, pad, decoder_start)
            losses = fit(model, lambda m, b: m(b[0], labels=b[1]).loss, tasks, steps)
        else:
            losses = fit(model, lambda m, b: m(b[0], decoder_input_ids=b[1], labels=b[1]).loss, tasks, steps)
        with torch.no_grad():
            decoder_inputs = shift_tokens_right(test_labels, 0, 0) if shifted else test_labels
            forced = model(test_source, decoder_input_ids=decoder_inputs).logits.argmax(-1)
            free = generate_ids(model, test_source, max_new_tokens=test_labels.shape[1])[:, 1:]
        facts[name] = {"train_loss": sum(losses[-10:]) / 10,
                       "teacher_forced_accuracy": (forced == test_labels).float().mean().item(),
                       "free_running_accuracy": (free == test_labels).float().mean().item(),
                       "free_running_exact": (free == test_labels).all(1).float().mean().item()}
        f = facts[name]
        rows.append([name, f["train_loss"], "-", f"{f['teacher_forced_accuracy']:.3f} forced / "
                     f"{f['free_running_accuracy']:.3f} free ({f['free_running_exact']:.0%} exact)", "-", "-"])
    bad = facts["decoder-only, targets = inputs"]
    good2, bad2 = (facts["enc-dec, decoder inputs = shift_right(labels)"], facts["enc-dec, decoder inputs = labels"])
    return LabResult(
        ["setup", "train loss", "true next-token loss", "token accuracy (seq2seq)", "argmax = the token read",
         "greedy output"], rows, facts=facts,
        conclusion=f"Position t must predict token t+1 from tokens up to t: without the shift the training loss "
                   f"collapses ({bad['train_loss']:.3f} decoder-only, {bad2['train_loss']:.4f} enc-dec) because "
                   f"the model copies its input, while the true next-token loss is {bad['next_token_loss']:.1f} and "
                   f"generation fails (its most likely next token is the one it reads "
                   f"{bad['predicts_input']:.0%} of the time, so greedy decoding repeats the prompt's last byte; "
                   f"enc-dec "
                   f"free-running accuracy {bad2['free_running_accuracy']:.0%}); the encoder-decoder's decoder reads "
                   f"decoder_start_token_id first, and free-running decoding ({good2['free_running_accuracy']:.0%}) "
                   f"trails teacher forcing ({good2['teacher_forced_accuracy']:.0%}) because its errors compound.")


# ---- 6. speculative decoding's correctness -------------------------------------------------------
def _tvd(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Total variation distance between the empirical distribution of `counts` (V,) and `probs` (V,)."""
    return 0.5 * (counts / counts.sum() - probs).abs().sum().item()


def speculative(out: Path | None, quick: bool) -> LabResult:
    """Two random MiniLlamas over a 16-token vocabulary (a target and a different, smaller draft). The
    first two tokens emitted by the real `speculative_generate` (2 draft tokens a round), over many
    samples, against the target's exact distributions: token 1's softmax p(x1) and token 2's marginal
    sum over x1 of p(x1) p(x2 | x1); and the same for plain sampling (`generate`) with as many samples."""
    from minillama.generate.decode import generate
    from minillama.generate.speculative import SpeculativeStats, speculative_generate

    samples, vocab, k = (600 if quick else 2000), 16, 2
    models = {}
    for name, layers, offset in (("target", 2, 0), ("draft", 1, 1)):
        models[name] = MiniLlama(byte_config(vocab_size=vocab, num_hidden_layers=layers, initializer_range=0.2),
                                 init=False).eval()
        models[name].init_weights(torch.Generator().manual_seed(lab_seed() + offset))
    target, draft = models["target"], models["draft"]
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():  # the exact distributions of the first two tokens, target and draft
        exact = {}
        for name, model in models.items():
            first = model(prompt).logits[0, -1].softmax(-1)  # (V,)
            grown = torch.cat([prompt.repeat(vocab, 1), torch.arange(vocab)[:, None]], dim=1)  # every x1
            second = first @ model(grown).logits[:, -1].softmax(-1)  # (V,) marginal of x2
            exact[name] = (first, second)
    spec_counts = torch.zeros(2, vocab)
    stats = SpeculativeStats()
    generator = torch.Generator().manual_seed(lab_seed())
    for _ in range(samples):
        ids, round_stats = speculative_generate(target, draft, prompt, max_new_tokens=3, num_draft_tokens=k,
                                                temperature=1.0, stop_token_ids=(), generator=generator)
        stats.proposed += round_stats.proposed
        stats.accepted += round_stats.accepted
        stats.rounds += round_stats.rounds
        spec_counts[0, ids[0, 5]] += 1
        spec_counts[1, ids[0, 6]] += 1
    plain = generate(target, prompt.repeat(samples, 1), max_new_tokens=2, temperature=1.0, stop_token_ids=(),
                     generator=torch.Generator().manual_seed(lab_seed() + 7))[:, 5:]
    plain_counts = torch.stack([torch.bincount(plain[:, i], minlength=vocab).float() for i in range(2)])
    draft_only = torch.stack([torch.multinomial(exact["draft"][i], samples, replacement=True,
                                                generator=torch.Generator().manual_seed(lab_seed() + 3))
                              for i in range(2)])
    draft_counts = torch.stack([torch.bincount(draft_only[i], minlength=vocab).float() for i in range(2)])
    facts = {"samples": samples, "acceptance_rate": stats.acceptance_rate,
             "draft_target_overlap": torch.minimum(*[exact[m][0] for m in models]).sum().item()}
    rows = []
    for i in range(2):
        p = exact["target"][i]
        facts[f"token{i + 1}"] = {
            "tvd_speculative": _tvd(spec_counts[i], p), "tvd_plain": _tvd(plain_counts[i], p),
            "tvd_draft_samples": _tvd(draft_counts[i], p),
            "tvd_draft_exact": 0.5 * (exact["draft"][i] - p).abs().sum().item()}
        f = facts[f"token{i + 1}"]
        rows.append([f"token {i + 1}", f["tvd_speculative"], f["tvd_plain"], f["tvd_draft_samples"],
                     f["tvd_draft_exact"]])
    rows.append(["acceptance rate", f"{stats.acceptance_rate:.3f} of {stats.proposed} draft tokens", "", "",
                 f"sum min(p, q) for token 1: {facts['draft_target_overlap']:.3f}"])

    def draw(plt):
        fig = plt.figure(figsize=(9, 3.5), dpi=110)
        for i in range(2):
            ax = fig.add_subplot(1, 2, i + 1)
            x = torch.arange(vocab)
            ax.bar(x - 0.3, exact["target"][i], 0.2, label="target p (exact)")
            ax.bar(x - 0.1, spec_counts[i] / samples, 0.2, label="speculative (sampled)")
            ax.bar(x + 0.1, plain_counts[i] / samples, 0.2, label="plain sampling")
            ax.bar(x + 0.3, exact["draft"][i], 0.2, label="draft q (exact)")
            ax.set_xticks(range(vocab))
            ax.set_xlabel(f"token {i + 1} (id)")
            ax.set_ylabel("probability")
            if i == 0:
                ax.legend(fontsize=7)
        return fig

    t1 = facts["token1"]
    return LabResult(
        [f"emitted token ({samples} samples)", "TVD speculative vs p", "TVD plain sampling vs p",
         "TVD draft samples vs p", "TVD draft q vs p (exact)"], rows, figure=figure_png(out, "speculative", draw),
        facts=facts,
        conclusion=f"Speculative decoding's samples follow the target, not the draft: their distance to the "
                   f"target's exact distribution ({t1['tvd_speculative']:.3f} for the first token) is the "
                   f"sampling noise that plain sampling has at the same count ({t1['tvd_plain']:.3f}), while the "
                   f"draft is {t1['tvd_draft_exact']:.2f} away; the draft's quality (acceptance rate "
                   f"{stats.acceptance_rate:.2f} here) sets the speed-up, never the distribution.")


# ---- 7. ZeRO stages' memory ---------------------------------------------------------------------
STAGES = ("ddp", "zero1", "zero2", "zero3")


def zero_bytes(params: int, ranks: int, stage: int, weight: int = 4, grad: int = 4,
               optimizer: int = 8) -> dict[str, float]:
    """Bytes per rank (Rajbhandari et al. 2020, Figure 1): Ψ parameters at `weight` bytes each, their
    gradients at `grad`, optimizer state at `optimizer` (K); stage 1 splits the optimizer state over
    the N ranks, stage 2 the gradients too, stage 3 the parameters too. float32 AdamW: 4 + 4 + 8 = 16Ψ;
    the paper's mixed-precision Adam: 2 + 2 + 12 (float32 master weights and two moments) = 16Ψ."""
    shares = {"params": ranks if stage >= 3 else 1, "grads": ranks if stage >= 2 else 1,
              "optimizer": ranks if stage >= 1 else 1}
    held = {"params": params * weight / shares["params"], "grads": params * grad / shares["grads"],
            "optimizer": params * optimizer / shares["optimizer"]}
    return {**held, "total": sum(held.values())}


def _zero_worker(rank: int, world: int, port: int, seed: int, results) -> None:
    """One rank: for each stage, the trainer's own wrapping (`Distributed.wrap`) and optimizers
    (`build_optimizers`), one training step, then its memory report (`Distributed.memory`)."""
    import os

    import torch.distributed as dist

    from minillama.train.config import OptimSection
    from minillama.train.distributed import Distributed
    from minillama.train.optim import build_optimizers

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batch = next(story_batches(2, 32, seed=seed + rank))
        for stage in STAGES:
            torch.manual_seed(seed)
            model = MiniLlama(byte_config())
            runner = Distributed(rank, world, 0, torch.device("cpu"))
            wrapped = runner.wrap(model, stage)
            optimizers = build_optimizers(model, OptimSection(), "cpu", zero_redundancy=stage == "zero1")
            loss = llama_loss(wrapped, batch)
            in_step = runner.parameter_bytes(model)  # between forward and backward, as the Trainer measures
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            report = runner.memory(model, optimizers, in_step)
            if rank == 0:
                results.put((stage, report))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _measure_zero(world: int) -> dict[str, dict]:
    """Each stage's memory report of rank 0, from `world` CPU processes (gloo) started here."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_zero_worker, args=(world, port, lab_seed(), results), nprocs=world,
                       start_method="spawn")
    reports = {}
    while not results.empty():
        stage, report = results.get()
        reports[stage] = report
    return reports


def zero_memory(out: Path | None, quick: bool) -> LabResult:
    """The ZeRO formula per rank for stages 0-3, checked against the trainer's own memory report of
    a real 2-process run (the byte model, float32 AdamW, one step per stage), then the formula at
    the paper's scale."""
    world = 2
    reports = _measure_zero(world)
    numel = MiniLlama(byte_config(), init=False).num_parameters()
    rows, facts = [], {"params": numel, "world": world, "stages": {}}
    for index, stage in enumerate(STAGES):
        formula = zero_bytes(numel, world, index)
        m = reports[stage]
        # zero2 holds whole parameters during a step (FSDP2 reshards them after it: see docs/training.md)
        params = m["params_in_step_bytes"] if stage != "zero3" else m["params_bytes"]
        measured = {"params": params, "grads": m["grads_bytes"], "optimizer": m["optimizer_bytes"]}
        measured["total"] = sum(measured.values())
        facts["stages"][stage] = {"formula": formula, "measured": measured,
                                  "zero3_params_in_step": m["params_in_step_bytes"]}
        rows.append([f"{stage}, byte model ({numel:,} params), N={world}",
                     *[f"{formula[k] / 1024:.1f} / {measured[k] / 1024:.1f}" for k in ("params", "grads", "optimizer")],
                     f"{formula['total'] / 1024:.1f} / {measured['total'] / 1024:.1f}",
                     measured["total"] / formula["total"]])
    gb = 1e9
    for label, psi, ranks in (("paper's example: 7.5B, N=64", 7.5e9, 64), ("LLaMA-7B, N=8", 6.738e9, 8)):
        for index, stage in enumerate(STAGES):
            f = zero_bytes(psi, ranks, index, weight=2, grad=2, optimizer=12)
            rows.append([f"{stage}, {label}, mixed precision", *[f"{f[k] / gb:.2f} GB" for k in
                                                                  ("params", "grads", "optimizer", "total")], "-"])
            facts[f"{label} {stage}"] = f["total"] / gb
    stages = facts["stages"]
    zero3_share = stages["zero3"]["measured"]["total"] / stages["ddp"]["measured"]["total"]
    zero1_error = abs(stages["zero1"]["measured"]["total"] / stages["zero1"]["formula"]["total"] - 1)
    paper = facts["paper's example: 7.5B, N=64 zero3"]
    return LabResult(
        ["stage, model, ranks", "parameters (formula / measured KiB)", "gradients", "optimizer state", "total",
         "measured / formula"], rows, facts=facts,
        conclusion=f"Per rank, ZeRO-1 divides the optimizer state by N, ZeRO-2 the gradients too and ZeRO-3 the "
                   f"parameters too: the trainer's own report of a real 2-process run matches the formula "
                   f"(total {zero3_share:.2f} of DDP's under zero3; zero1 within {zero1_error:.1%}, it splits "
                   f"whole tensors), and at the paper's scale 16Ψ = 120 GB per GPU falls to {paper:.1f} GB under "
                   f"stage 3 on 64 GPUs.")


# ---- 8. extrapolation beyond the trained context (and a pointer to quantization) -------------------
def extrapolation(out: Path | None, quick: bool) -> LabResult:
    """A byte model trained on 64-token windows, evaluated on longer windows of held-out text with
    RoPE unscaled and under the scalings `minillama eval --context-lengths` applies
    (train/extrapolation.py: its `Scaling` and factor rule, the model's own RotaryEmbedding swapped
    in as that module does): the loss at positions inside and beyond the trained context."""
    import dataclasses

    from minillama.model.llama import RotaryEmbedding
    from minillama.train.extrapolation import Scaling

    context = 64
    lengths = (64, 512) if quick else (64, 128, 256, 512)
    scalings = ("none", "linear", "dynamic", "yarn")
    model = trained_byte_model(200 if quick else 300, seq=context, batch=8, max_position_embeddings=context)
    text = story_bytes("val", 200_000)
    rows, facts, curves = [], {"context": context, "lengths": list(lengths)}, {}
    for length in lengths:
        # the same number of predicted tokens at every length
        inputs, targets = next(random_windows(text, 4096 // length, length, lab_seed() + length))
        row = [length]
        for name in scalings:
            rope = Scaling(name).rope_scaling(length, context)
            model.model.rotary_emb = RotaryEmbedding(dataclasses.replace(model.config, rope_scaling=rope))
            with torch.no_grad():
                logits = model(inputs).logits
            per_position = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape).mean(0)  # (length,)
            inside, beyond = per_position[:context].mean().item(), per_position[context:].mean().item()
            facts[f"{name} {length}"] = {"inside": inside, "beyond": beyond if length > context else None}
            row.append(f"{inside:.3f} / {beyond:.3f}" if length > context else f"{inside:.3f}")
            if length == lengths[-1]:
                curves[name] = per_position
        rows.append(row)
    model.model.rotary_emb = RotaryEmbedding(model.config)
    longest = lengths[-1]
    best = min(scalings, key=lambda name: facts[f"{name} {longest}"]["beyond"])

    def draw(plt):
        fig = plt.figure(figsize=(7, 3.5), dpi=110)
        ax = fig.add_subplot(1, 1, 1)
        bins = torch.arange(0, longest + 1, 32)
        for name, losses in curves.items():
            means = [losses[a:b].mean().item() for a, b in zip(bins[:-1], bins[1:])]
            ax.plot((bins[:-1] + 16).tolist(), means, "o-", ms=3, label=name)
        ax.axvline(context, color="gray", ls="--", lw=1, label="trained context")
        ax.set_xlabel("position in the window")
        ax.set_ylabel("mean loss (nats/byte)")
        ax.legend(fontsize=8)
        return fig

    none = facts[f"none {longest}"]
    return LabResult(
        ["window length", *[f"{name}: loss inside / beyond {context}" for name in scalings]], rows,
        figure=figure_png(out, "extrapolation", draw), facts=facts,
        conclusion=f"Beyond the {context} positions it was trained on, unscaled RoPE's loss rises "
                   f"({none['inside']:.2f} inside, {none['beyond']:.2f} beyond at length {longest}); without "
                   f"retraining, {best} scaling holds it best ({facts[f'{best} {longest}']['beyond']:.2f}; dynamic "
                   f"NTK scaling beats none on every seed tried, yarn "
                   f"({facts[f'yarn {longest}']['beyond']:.2f}) not on all), while linear interpolation, which "
                   f"squeezes every position, is worse than none without the fine-tuning it is meant for "
                   f"({facts[f'linear {longest}']['inside']:.2f} / {facts[f'linear {longest}']['beyond']:.2f}).")


def quantization(out: Path | None, quick: bool) -> LabResult:
    """A trained byte model (MLP width 192, so groups of 32 divide every input) quantized by the real
    `quantize_model` three ways: int8 per output channel, int4 round-to-nearest in groups of 32, and
    GPTQ int4 calibrated on training text; each measured against the float model: the weights'
    relative error, the KL divergence of next-token distributions and the loss on held-out text."""
    import torch.nn.functional as F

    from minillama.quant.linear import QuantLinear, quantizable_linears
    from minillama.quant.model import model_file_bytes, quantize_model

    base = trained_byte_model(150, batch=8, intermediate_size=192) if quick else \
        trained_byte_model(300, intermediate_size=192)
    val = held_out()
    calibration = next(story_batches(32, 64, seed=lab_seed() + 11))[0]  # (32, 64) training-text windows
    with torch.no_grad():
        base_logp = [base(inputs).logits.log_softmax(-1) for inputs, _ in val]
    base_loss = mean_loss(base, llama_loss, iter(val), len(val))
    floats = {name: linear.weight.detach().clone() for name, linear in quantizable_linears(base).items()}
    rows = [["float32", 0.0, 0.0, base_loss, 0.0, model_file_bytes(base)]]
    facts = {"float32": {"loss": base_loss, "bytes": model_file_bytes(base)}}
    for method in ("int8", "int4", "gptq-int4"):
        model = copy.deepcopy(base)
        quantize_model(model, method, group_size=32, calibration=calibration if method == "gptq-int4" else None)
        errors = [((module.dequantized_weight() - floats[name]).norm() / floats[name].norm()).item()
                  for name, module in model.named_modules() if isinstance(module, QuantLinear)]
        with torch.no_grad():
            kl = sum(F.kl_div(model(inputs).logits.log_softmax(-1), logp, log_target=True, reduction="none")
                     .sum(-1).mean().item() for (inputs, _), logp in zip(val, base_logp)) / len(val)
        loss = mean_loss(model, llama_loss, iter(val), len(val))
        facts[method] = {"weight_error": sum(errors) / len(errors), "kl": kl, "loss": loss,
                         "bytes": model_file_bytes(model)}
        rows.append([method, facts[method]["weight_error"], kl, loss, loss - base_loss, facts[method]["bytes"]])
    rtn, gptq = facts["int4"], facts["gptq-int4"]
    spread = max(abs(facts[m]["loss"] - base_loss) for m in ("int8", "int4", "gptq-int4"))
    return LabResult(
        ["weights", "relative weight error", "KL(float, quantized) per token", "held-out loss",
         "loss increase", "file bytes"], rows, facts=facts,
        conclusion=f"Measured by how far the next-token distributions move (KL per token), int8 per channel is "
                   f"nearly free ({facts['int8']['kl']:.1g}), int4 round-to-nearest costs most ({rtn['kl']:.1g}), "
                   f"and GPTQ, which rounds one column at a time and corrects the columns not yet rounded for the "
                   f"error it caused on the calibration inputs, moves them {rtn['kl'] / gptq['kl']:.0f}x less "
                   f"({gptq['kl']:.1g}) although its weights are no closer to the float ones (relative error "
                   f"{gptq['weight_error']:.3f} vs {rtn['weight_error']:.3f}); on this tiny model every held-out "
                   f"loss change is within {spread:.3f} nats, below the noise of the measurement.")


EXPERIMENTS = (
    Experiment("parameter-count", "training",
               "How many parameters do GPT-2 and LLaMA shapes have, by hand and in the real models?",
               parameter_count),
    Experiment("lora", "training",
               "How many parameters does LoRA train, where do adapters go, and why does B start at zero?", lora),
    Experiment("init-std", "training",
               "How should pretraining initialise the weights (std sweep: loss, divergence, residual scaling)?",
               init_std),
    Experiment("sft-mask", "training",
               "Pretraining vs SFT: what does the loss mask on the prompt change?", sft_mask),
    Experiment("teacher-forcing", "training",
               "Why is the decoder's input shifted by one (teacher forcing, BOS / decoder_start_token_id)?",
               teacher_forcing),
    Experiment("speculative", "training",
               "Does speculative decoding's acceptance rule preserve the target model's distribution?",
               speculative),
    Experiment("zero-memory", "training",
               "How much memory per rank do ZeRO stages 1, 2 and 3 save?", zero_memory),
    Experiment("extrapolation", "training",
               "What happens beyond the trained context length, with and without RoPE scaling?", extrapolation),
    Experiment("quantization", "training",
               "What do int8, int4 and GPTQ weight quantization cost a trained model?", quantization),
)
