"""The unlabelled movie-review text BERT is pretrained on for SST-2 (docs/bert.md).

    python experiments/bert_sst_text.py --out runs/sst_text.txt                 # sentences and phrases
    python experiments/bert_sst_text.py --out runs/sst_sentences.txt --sentences-only

The SST-2 training sentences shipped in the package, plus the phrases of GLUE's SST-2 training set
(shipped too: 67,349 sub-phrases of the treebank's training sentences), labels dropped; each
distinct text once, one document each (`<|endoftext|>` lines between them, the format `prepare`
reads). Every text equal to a dev or test sentence is left out, so nothing the classifier is
scored on is read in pretraining.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minillama.finetune.classify import sst2_split, training_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the text file to write")
    parser.add_argument("--sentences-only", action="store_true", help="leave GLUE's phrases out")
    args = parser.parse_args()
    held_out = {sentence.strip() for split in ("dev", "test") for _, sentence in sst2_split(split)}
    texts = [sentence for _, sentence in training_pairs("sst2")]
    if not args.sentences_only:
        texts += [phrase for _, phrase in training_pairs("sst2-glue")]
    seen: set[str] = set()
    documents = []
    for text in (t.strip() for t in texts):
        if text and text not in seen and text not in held_out:
            seen.add(text)
            documents.append(text)
    Path(args.out).write_text("\n<|endoftext|>\n".join(documents) + "\n<|endoftext|>\n", encoding="utf-8")
    print(f"{len(documents):,} documents, {sum(map(len, documents)):,} characters -> {args.out}")


if __name__ == "__main__":
    main()
