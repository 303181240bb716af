"""The unlabelled movie-review text BERT is pretrained on for SST-2 (docs/bert.md).

    python experiments/bert_sst_text.py --out runs/sst_text.txt
    python experiments/bert_sst_text.py --out runs/sst_text.txt \
        --phrases /work/shared/data/sentiment/sst2_glue_phrases_train.tsv.gz

The SST-2 training sentences shipped in the package, plus (optionally) the phrases of GLUE's SST-2
training set (sub-phrases of the same training sentences, 60,614 of them), labels dropped; each
distinct text once, one document each (`<|endoftext|>` lines between them, the format `prepare`
reads). Every text equal to a dev or test sentence is left out, so nothing the classifier is
scored on is read in pretraining.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minillama.finetune.classify import read_labelled_tsv, sst2_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the text file to write")
    parser.add_argument("--phrases", help="GLUE SST-2 phrase file (label<TAB>phrase, header line), labels ignored")
    args = parser.parse_args()
    held_out = {sentence.strip() for split in ("dev", "test") for _, sentence in sst2_split(split)}
    texts = [sentence for _, sentence in sst2_split("train")]
    if args.phrases:
        texts += [phrase for _, phrase in read_labelled_tsv(args.phrases)]
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
