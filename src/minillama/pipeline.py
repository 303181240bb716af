"""`minillama pipeline`: the whole life of a model on the embedded TinyStories sample, one command.

    tokenizer (BPE, 4096) -> token files -> pretraining (tiny preset, ~5 min on 2 CPU cores)
    -> transformers export -> evaluation (loss, bits per byte) -> a story from a prompt

Everything goes under one run directory (default runs/pipeline):

    tokenizer/       tokenizer.json, tokenizer_config.json (ChatML template), special_tokens_map.json
    data/            train.bin, val.bin, meta.json
    checkpoints/     step-XXXXXX/ (model + training state), latest, best
    metrics.jsonl    one record per log interval and evaluation
    loss.png         train and validation loss curves
    hf/              the exported model: transformers.AutoModelForCausalLM / AutoTokenizer load it
    report.json      val loss, perplexity, bits per byte, throughput, the story
    story.txt        the generated story

Running it again resumes: finished stages are not redone.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)
DEFAULT_PROMPT = "One day, Lily met a Shoggoth"


@dataclass
class PipelineReport:
    run_dir: str
    hf_dir: str
    steps: int
    tokens: int
    train_minutes: float
    val_loss: float  # over every held-out document (`val_documents`), not the training's subset
    perplexity: float
    bits_per_byte: float
    val_documents: int
    prompt: str
    story: str
    temperature: float
    top_p: float | None
    seed: int
    repeated_4grams: float  # share of the story's word 4-grams that occurred earlier in it


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """The share of a text's word n-grams that already occurred earlier in it: 0 for a text that
    never repeats itself, near 1 for one stuck in a loop."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def run_pipeline(config, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 200, temperature: float = 0.8,
                 top_p: float | None = 0.9, seed: int = 1337) -> PipelineReport:
    """Run every stage with `config` (a `TrainConfig`; its run.out_dir is the run directory). The
    story is sampled (`temperature` 0 is greedy) and ends at the end-of-text token."""
    from minillama.export import save_hf
    from minillama.files import atomic_write_text
    from minillama.generate import generate_text
    from minillama.model import MiniLlama
    from minillama.tokenizer import Tokenizer
    from minillama.train.checkpoint import claim_run_directory
    from minillama.train.evaluate import evaluate_checkpoint
    from minillama.train.pretrain import pretrain

    run_dir = Path(config.run.out_dir)
    with claim_run_directory(run_dir) as lock:  # the whole pipeline, not only its training
        result = pretrain(config, lock)
        if result.stopped_by != "budget":
            raise KeyboardInterrupt
        # the checkpoint holds the tokenizer it was trained with (OUT/tokenizer, or --data.tokenizer's)
        tokenizer = Tokenizer.from_pretrained(result.checkpoint)
        model = MiniLlama.from_pretrained(result.checkpoint)
        hf_dir = save_hf(model, run_dir / "hf", tokenizer=tokenizer)
        log.info("exported a transformers model to %s", hf_dir)
        evaluation = evaluate_checkpoint(hf_dir, config.data.dataset, split="val", seq_len=config.data.seq_len)
        story = generate_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, seed=seed)
        report = PipelineReport(str(run_dir), str(hf_dir), result.step, result.tokens, result.seconds / 60,
                                evaluation["loss"], evaluation["perplexity"], evaluation["bits_per_byte"],
                                evaluation["documents"], prompt, story, temperature, top_p, seed,
                                repeated_ngram_share(prompt + story))
        atomic_write_text(run_dir / "report.json", json.dumps(asdict(report), indent=2) + "\n")
        atomic_write_text(run_dir / "story.txt", prompt + story + "\n")
    return report


def pipeline_defaults():
    """The demo's training settings (configs/tiny.toml): `minillama train`'s defaults with Muon for
    the blocks' matrices at lr 3e-3 decaying to a tenth, compiled where torch.compile can build
    kernels. Each lowers the bits per byte reached in the same 5 minutes on 2 cores
    (docs/training.md, "More model per CPU-minute")."""
    from minillama.hardware import cpp_compiler_available
    from minillama.train.config import OptimSection, RunSection, TrainConfig

    return TrainConfig(optim=OptimSection(optimizer="muon", lr=3e-3, min_lr_ratio=0.1),
                       run=RunSection(compile=cpp_compiler_available()))


def register(subparsers: argparse._SubParsersAction) -> None:
    from minillama.options import positive_int
    from minillama.train.config import add_config_arguments

    parser = subparsers.add_parser(
        "pipeline", help="the whole pipeline on the embedded TinyStories: tokenizer, data, train, export, story",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", dest="run.out_dir", default="runs/pipeline", metavar="DIR",
                        help="run directory (default: %(default)s)")
    parser.add_argument("--minutes", dest="budget.max_minutes", type=float, default=5.0, metavar="MINUTES",
                        help="training time (default: %(default)s)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="story prompt (default: %(default)r)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="story sampling (0: greedy)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling of the story")
    parser.add_argument("--seed", type=int, default=1337, help="the story's sampling seed")
    # --out and --minutes are the pipeline's spellings of run.out_dir and budget.max_minutes
    add_config_arguments(parser, pipeline_defaults(), exclude=("run.out_dir", "budget.max_minutes"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from minillama.train.config import config_from_args

    config = config_from_args(args, defaults=pipeline_defaults())
    if not config.run.compile and "run.compile" not in vars(args):
        log.warning("no C++ compiler found (g++, or $CXX): training without torch.compile, which makes fewer "
                    "steps in the same minutes")
    report = run_pipeline(config, args.prompt, args.max_new_tokens, args.temperature, args.top_p, args.seed)
    how = "greedy" if report.temperature == 0 else \
        f"sampled: temperature {report.temperature:g}, top-p {report.top_p:g}, seed {report.seed}; --temperature 0 " \
        "for greedy"
    print(f"\nrun directory      {report.run_dir}  (loss curve: {report.run_dir}/loss.png)")
    print(f"transformers model {report.hf_dir}")
    print(f"trained            {report.steps} steps, {report.tokens:,} tokens, {report.train_minutes:.1f} min")
    print(f"validation         all {report.val_documents} held-out stories: loss {report.val_loss:.4f}  "
          f"perplexity {report.perplexity:.2f}  bits/byte {report.bits_per_byte:.3f}")
    print(f"story              {how}; {report.repeated_4grams:.0%} of its 4-grams repeat")
    print(f"\n{report.prompt}{report.story}")
    return 0
