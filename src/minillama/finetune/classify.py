"""Sequence classification (SST-2 sentiment by default) through the one training loop.

The model is `MiniLlamaForSequenceClassification`: a pretrained decoder (`--base DIR`) or a fresh
one (`--model.preset`, with a tokenizer trained on the training sentences when none is given), and
a score head on each sentence's last token. A BERT base (`minillama bert pretrain`) becomes a
`BertForSequenceClassification`: its encoder, a pooler on [CLS] and a linear classifier; each
sentence is read as `[CLS] sentence [SEP]`. `--from-scratch` keeps the base's shape and tokenizer
but initialises the weights afresh: the baseline that measures what pretraining brought.

What differs from pretraining: the batches (padded sentences with one class id each), the loss
(`classification_loss`) and the checkpoint files (a transformers `LlamaForSequenceClassification`
or `BertForSequenceClassification` directory). Results in OUT/:

    checkpoints/step-N/   the loop's checkpoints (each a transformers-loadable classifier)
    model/                the final classifier with its tokenizer
    report.json           accuracy and loss on the dev and test splits
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minillama.errors import MiniLlamaError
from minillama.finetune.batches import Example, ExampleBatches, pad_batch
from minillama.train.checkpoint import claim_run_directory
from minillama.train.config import TrainConfig
from minillama.train.distributed import Distributed, rank_rows
from minillama.train.loop import Trainer

log = logging.getLogger(__name__)
SST2_LABELS = ("negative", "positive")  # SST-2's label column holds 0 / 1
SPLITS = ("train", "dev", "test")
# The training sets `classify train --data.dataset NAME` names: SST-2's 6,920 sentences, or GLUE's
# SST-2 training set (67,349 labelled phrases of the treebank's training sentences, the sentences
# among them); the dev and test sentences are in neither.
TRAINING_SETS = {"sst2": "sentiment/sst2_train.tsv.gz", "sst2-glue": "sentiment/sst2_glue_train.tsv.gz"}


def read_labelled_tsv(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(label, sentence) pairs of a `label<TAB>sentence` file with a header line (SST-2's layout);
    each line is split once on its first tab (the sentences are not quoted)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    pairs = []
    for lineno, line in enumerate(lines[1:], 2):
        label, tab, sentence = line.partition("\t")
        if not tab or not label.strip().isdigit():
            raise MiniLlamaError(f"{path}:{lineno}: expected '<class id>\\t<sentence>', got {line[:60]!r}")
        pairs.append((int(label), sentence))
    return pairs


def sst2_split(split: str) -> list[tuple[int, str]]:
    from minillama.assets import asset_path

    if split not in SPLITS:
        raise ValueError(f"SST-2 splits are {', '.join(SPLITS)}, not {split!r}")
    return read_labelled_tsv(asset_path(f"sentiment/sst2_{split}.tsv.gz"))


def training_pairs(dataset: str) -> list[tuple[int, str]]:
    """(label, sentence) pairs to train on: a name of `TRAINING_SETS` or a `label<TAB>sentence` file
    with a header line and SST-2's class ids (0 negative, 1 positive)."""
    from minillama.assets import asset_path

    if dataset in TRAINING_SETS:
        return read_labelled_tsv(asset_path(TRAINING_SETS[dataset]))
    if not Path(dataset).is_file():
        raise MiniLlamaError(f"classify data.dataset {dataset!r} is neither {' nor '.join(TRAINING_SETS)} nor a "
                             "label<TAB>sentence file")
    pairs = read_labelled_tsv(dataset)
    check_labels(pairs, list(SST2_LABELS), dataset)
    return pairs


PAD_WORD, UNKNOWN_WORD = 0, 1  # the ids `sst2_word_ids` gives padding and words outside the vocabulary


def sst2_word_vocab(min_count: int = 2) -> dict[str, int]:
    """Word -> id for the SST-2 training words seen at least `min_count` times (SST-2 is lower-cased
    and tokenized, so splitting on spaces gives its words), from 2 on: 0 pads, 1 is any other word.
    For the word-level models of examples/attention_sentiment.py and `minillama lab attention-depth`."""
    import collections

    counts = collections.Counter(word for _, sentence in sst2_split("train") for word in sentence.split())
    return {word: i for i, word in enumerate(sorted(w for w, n in counts.items() if n >= min_count), start=2)}


def sst2_word_ids(split: str, vocab: dict[str, int], max_len: int = 64):
    """The split's sentences as word ids (N, T), right-padded with `PAD_WORD` to the longest (at most
    `max_len` words), and their labels (N,)."""
    import torch

    pairs = sst2_split(split)
    rows = [[vocab.get(w, UNKNOWN_WORD) for w in s.split()][:max_len] or [UNKNOWN_WORD] for _, s in pairs]
    ids = torch.full((len(rows), max(map(len, rows))), PAD_WORD, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids, torch.tensor([label for label, _ in pairs])


def encode_sentences(tokenizer: Any, pairs: list[tuple[int, str]], max_len: int) -> list[Example]:
    """Token ids (truncated to `max_len`; no special tokens, so no text token is the pad token).
    A BERT tokenizer frames each sentence as `[CLS] sentence [SEP]` within `max_len`."""
    if hasattr(tokenizer, "encode_for_model"):  # BERT
        return [Example(tokenizer.encode_for_model(sentence, max_length=max_len)[0], label)
                for label, sentence in pairs]
    ids = tokenizer.encode_batch([sentence for _, sentence in pairs])
    return [Example(row[:max_len], label) for row, (label, _) in zip(ids, pairs, strict=True)]


def check_labels(pairs: list[tuple[int, str]], labels: list[str], source: str) -> None:
    """Every class id must name one of the classifier's classes (line numbers count the header)."""
    for index, (label, _) in enumerate(pairs):
        if not 0 <= label < len(labels):
            raise MiniLlamaError(f"{source}:{index + 2}: class id {label} is not one of the classifier's "
                                 f"{len(labels)} classes (0 to {len(labels) - 1}: {', '.join(labels)})")


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
                        ) -> torch.Tensor:
    """Mean cross-entropy of the class logits (B, num_labels) against the class ids (B,)."""
    return model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 label_smoothing=label_smoothing).loss


@torch.no_grad()
def evaluate_classifier(model: nn.Module, examples: list[Example], batch_size: int, pad_token_id: int,
                        device: torch.device, max_batches: int | None = None,
                        dist: Distributed | None = None) -> dict[str, float]:
    """Accuracy and mean loss over (the first `max_batches` batches of) `examples`. With `dist`
    (under torchrun) the batches are global, of `batch_size` x world size examples, each rank scores
    its rows of each (`rank_rows`) and the sums are over all ranks: every rank returns one
    process's scores."""
    rank, world_size = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    correct, loss, count = 0, 0.0, 0
    for rows, counted in rank_rows(examples, batch_size, rank, world_size, max_batches):
        batch = {k: v.to(device) for k, v in pad_batch(rows, pad_token_id).items()}
        output = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        if counted:
            n = len(batch["labels"])
            correct += int((output.logits.argmax(-1) == batch["labels"]).sum())
            loss, count = loss + float(output.loss) * n, count + n
    if dist is not None:
        correct, loss, count = dist.sum_over_ranks([correct, loss, count])
    return {"accuracy": correct / count, "loss": loss / count, "examples": int(count)}


@dataclass
class ClassifierFiles:
    """The Trainer's `ModelFiles` for a classifier: transformers' sequence-classification layout
    (LlamaForSequenceClassification, or BertForSequenceClassification for family "bert")."""

    config: Any  # ModelConfig or BertConfig
    labels: list[str]
    family: str = "llama"

    def write(self, state: dict[str, torch.Tensor], directory: Path) -> None:
        if self.family == "bert":
            from minillama.bert.io import write_bert_dir

            write_bert_dir(self.config, state, directory, "BertForSequenceClassification", self.labels)
            return
        from minillama.model.io import write_classifier_dir

        write_classifier_dir(self.config, self.labels, state, directory)

    def read(self, directory: Path) -> dict[str, torch.Tensor]:
        return load_classifier(directory).state_dict()


def load_classifier(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """A saved classifier of either family, by its config.json."""
    from minillama.bert import model_family

    if model_family(directory) == "bert":
        from minillama.bert.model import load_bert_dir

        model = load_bert_dir(directory, device)
        if not hasattr(model, "labels"):
            raise MiniLlamaError(f"{directory} is a BERT masked LM, not a sequence classifier; train one with "
                                 f"`minillama classify train --base {directory}`")
        return model
    from minillama.model import MiniLlamaForSequenceClassification

    return MiniLlamaForSequenceClassification.from_pretrained(directory, device=device)


def load_classifier_tokenizer(directory: str | os.PathLike, family: str) -> Any:
    """The tokenizer of a model directory: a BertTokenizer for the BERT family."""
    if family == "bert":
        from minillama.bert.tokenizer import load_bert_tokenizer

        return load_bert_tokenizer(directory)
    from minillama.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(directory)


@dataclass
class ClassifySettings:
    base: str | None = None  # a pretrained model directory; None: train from scratch
    from_scratch: bool = False  # the base's shape and tokenizer, fresh weights


def build_classifier(config: TrainConfig, settings: ClassifySettings, tokenizer_dir: Path, labels: list[str]):
    """(classifier, tokenizer): the base's decoder with a new score head, or a fresh model."""
    from minillama.bert import model_family
    from minillama.model import MiniLlama, MiniLlamaForSequenceClassification
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches

    if settings.from_scratch and settings.base is None:
        raise ValueError("--from-scratch takes the shape and tokenizer of --base; name the base model")
    if settings.base is not None and model_family(settings.base) == "bert":
        return build_bert_classifier(settings, tokenizer_dir, labels)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if settings.base is None:
        model_config = config.model.build(vocab_size=tokenizer.vocab_size, pad_token_id=pad,
                                          eos_token_id=tokenizer.eos_token_id,
                                          bos_token_id=tokenizer.bos_token_id)
        return MiniLlamaForSequenceClassification(model_config, labels), tokenizer
    base = MiniLlama.from_pretrained(settings.base)
    check_tokenizer_matches(tokenizer, base.config.vocab_size, settings.base)
    if base.config.pad_token_id is None:
        base.config.pad_token_id = pad  # the head reads the last token that is not padding
    if settings.from_scratch:
        return MiniLlamaForSequenceClassification(base.config, labels), tokenizer
    return MiniLlamaForSequenceClassification(base.config, labels, backbone=base.model), tokenizer


def build_bert_classifier(settings: ClassifySettings, tokenizer_dir: Path, labels: list[str]):
    """A BERT base's encoder (a masked LM's, or a classifier's) with a new pooler and classifier,
    or (from_scratch) the same shape freshly initialised."""
    from minillama.bert.model import BertForSequenceClassification, load_bert_dir
    from minillama.tokenizer import check_tokenizer_matches

    tokenizer = load_classifier_tokenizer(tokenizer_dir, "bert")
    base = load_bert_dir(settings.base)
    check_tokenizer_matches(tokenizer, base.config.vocab_size, settings.base)
    if settings.from_scratch:
        return BertForSequenceClassification(base.config, labels), tokenizer
    encoder = base.bert
    encoder.pooler = None  # a classifier's pooler is trained for its own labels: a new one, as the head
    return BertForSequenceClassification(base.config, labels, backbone=encoder), tokenizer


def ensure_classify_tokenizer(config: TrainConfig, settings: ClassifySettings, out_dir: Path,
                              dist: Distributed, train_pairs: list[tuple[int, str]]) -> Path:
    """The tokenizer: data.tokenizer, the base's, or one trained on the training sentences."""
    if config.data.tokenizer or settings.base:
        return Path(config.data.tokenizer or settings.base)
    path = out_dir / "tokenizer"
    if dist.is_main and not (path / "tokenizer.json").is_file():
        from minillama.tokenizer import DEFAULT_SPECIAL_TOKENS, train_tokenizer

        text = out_dir / "train_sentences.txt"
        text.write_text("\n".join(s for _, s in train_pairs) + "\n", encoding="utf-8")
        train_tokenizer(text, config.data.vocab_size, DEFAULT_SPECIAL_TOKENS, path)
        text.unlink()
    dist.barrier()
    return path


def train_classifier(config: TrainConfig, settings: ClassifySettings) -> dict[str, Any]:
    """Train on data.dataset (`training_pairs`), validating on the SST-2 dev split; returns the report
    (dev and test accuracy)."""
    train_pairs = training_pairs(config.data.dataset)  # refused before any run directory is made
    dist = Distributed.from_env(config.run.device, config.run.threads)
    lock = claim_run_directory(config.run.out_dir) if dist.is_main else None
    try:
        out_dir = Path(config.run.out_dir)
        tokenizer_dir = ensure_classify_tokenizer(config, settings, out_dir, dist, train_pairs)
        torch.manual_seed(config.run.seed)
        model, tokenizer = build_classifier(config, settings, tokenizer_dir, list(SST2_LABELS))
        max_len = min(config.data.seq_len, model.config.max_position_embeddings)
        train = encode_sentences(tokenizer, train_pairs, max_len)
        dev = encode_sentences(tokenizer, sst2_split("dev"), max_len)
        pad = model.config.pad_token_id
        batches = ExampleBatches(train, config.data.batch_size, partial(pad_batch, pad_token_id=pad),
                                 seed=config.run.seed, rank=dist.rank, world_size=dist.world_size)

        def evaluate(wrapped: nn.Module) -> float:
            scores = evaluate_classifier(wrapped, dev, config.data.batch_size, pad, dist.device,
                                         config.run.eval_batches, dist)
            if dist.is_main:
                log.info("dev accuracy %.3f (first %d sentences)", scores["accuracy"], scores["examples"])
            return scores["loss"]

        from minillama.bert import model_family

        family = model_family(settings.base) if settings.base else "llama"
        files = ClassifierFiles(model.config, model.labels, family)
        trainer = Trainer(config, model, batches, evaluate, dist, batch_loss=classification_loss,
                          tokenizer_dir=tokenizer_dir, model_files=files, lock=lock,
                          extra_state={"classify": asdict(settings)})
        result = trainer.fit()
        report: dict[str, Any] = {"steps": result.step, "stopped_by": result.stopped_by,
                                  "checkpoint": str(result.checkpoint)}
        if dist.is_main and result.stopped_by == "budget" and result.checkpoint is not None:
            report |= finish(result.checkpoint, tokenizer, out_dir, config.data.batch_size, max_len)
        return report
    finally:
        if lock is not None:
            lock.release()
        dist.close()


def finish(checkpoint: Path, tokenizer: Any, out_dir: Path, batch_size: int, max_len: int) -> dict[str, Any]:
    """OUT/model from the last checkpoint, and its dev / test scores in OUT/report.json."""
    from minillama.bert.io import save_bert
    from minillama.export import save_hf
    from minillama.files import atomic_write_text

    model = load_classifier(checkpoint).eval()
    (save_bert if model.config.__class__.__name__ == "BertConfig" else save_hf)(model, out_dir / "model", tokenizer)
    report: dict[str, Any] = {"model": str(out_dir / "model")}
    for split in ("dev", "test"):
        examples = encode_sentences(tokenizer, sst2_split(split), max_len)
        report[split] = evaluate_classifier(model, examples, batch_size, model.config.pad_token_id,
                                            torch.device("cpu"))
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def evaluate_saved_classifier(model_dir: str | os.PathLike, split: str = "test", batch_size: int = 64,
                              device: str = "auto", data: str | None = None) -> dict[str, Any]:
    """Accuracy of a saved classifier on an SST-2 split (or a `label<TAB>sentence` file `data`)."""
    from minillama.bert import model_family
    from minillama.hardware import resolve_device

    target = resolve_device(device)
    pairs = read_labelled_tsv(data) if data else sst2_split(split)
    model = load_classifier(model_dir, device=target).eval()
    check_labels(pairs, model.labels, str(data or f"sst2/{split}"))
    tokenizer = load_classifier_tokenizer(model_dir, model_family(model_dir))
    examples = encode_sentences(tokenizer, pairs, model.config.max_position_embeddings)
    scores = evaluate_classifier(model, examples, batch_size, model.config.pad_token_id, target)
    return {"model": str(model_dir), "data": data or f"sst2/{split}", **scores}
