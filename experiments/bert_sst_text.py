"""The unlabelled text BERT is pretrained on for SST-2 (docs/bert.md).

    python experiments/bert_sst_text.py --out runs/bert_text.txt                  # the recipe that paid
    python experiments/bert_sst_text.py --out runs/sst_text.txt --phrases --copies 1 --no-stories

The SST-2 training sentences shipped in the package (--copies times each), optionally the phrases of
GLUE's SST-2 training set (--phrases: 67,349 sub-phrases of the same sentences), and the shipped
TinyStories training stories (unless --no-stories), labels dropped, shuffled with a fixed seed, one
document each (`<|endoftext|>` lines between them, the format `prepare` reads). Every text equal to
an SST-2 dev or test sentence is left out, so nothing the classifier is scored on is read in
pretraining.

Why the stories: the SST-2 text alone is 6,900 distinct sentences (GLUE's phrases are pieces of
them), and a BERT pretrained on it, with or without the phrases, stayed at the frequent-token stage
for thousands of steps (masked-token loss within 0.4 nats of the unigram entropy). Coherent
running text is what teaches it to read the context.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from minillama.data import load_documents
from minillama.finetune.classify import sst2_split, training_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the text file to write")
    parser.add_argument("--copies", type=int, default=3, help="times each SST-2 sentence is included (default: 3)")
    parser.add_argument("--phrases", action="store_true", help="add GLUE's SST-2 phrases, each once")
    parser.add_argument("--no-stories", action="store_true", help="leave the TinyStories sample out")
    args = parser.parse_args()
    held_out = {sentence.strip() for split in ("dev", "test") for _, sentence in sst2_split(split)}
    sentences = [sentence.strip() for _, sentence in training_pairs("sst2")]
    texts = list(sentences)
    if args.phrases:
        texts += [phrase for _, phrase in training_pairs("sst2-glue")]
    seen: set[str] = set()
    review_text = []
    for text in (t.strip() for t in texts):
        if text and text not in seen and text not in held_out:
            seen.add(text)
            review_text.append(text)
    sentences = set(sentences)
    stories = [] if args.no_stories else list(load_documents("tinystories-sample", "train"))
    documents = (stories + [t for t in review_text if t in sentences] * args.copies
                 + [t for t in review_text if t not in sentences])
    random.Random(0).shuffle(documents)
    Path(args.out).write_text("\n<|endoftext|>\n".join(documents) + "\n<|endoftext|>\n", encoding="utf-8")
    print(f"{len(documents):,} documents ({len(review_text):,} distinct review texts, {len(stories):,} stories), "
          f"{sum(map(len, documents)):,} characters -> {args.out}")


if __name__ == "__main__":
    main()
