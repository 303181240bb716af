"""BERT's tokenizer: the project's byte-level BPE with BERT's special tokens, as RoBERTa pairs a
byte-level BPE with its own (`[PAD] [UNK] [CLS] [SEP] [MASK]`, ids 0-4).

Saved so that `transformers.AutoTokenizer` needs no extra code: tokenizer.json carries a
`TemplateProcessing` post-processor (`[CLS] a [SEP]`, pairs `[CLS] a [SEP] b [SEP]` with token
type ids 0 then 1), and `[MASK]` strips the spaces before it (`lstrip`, as RoBERTa's `<mask>`), so
"went to the [MASK]." asks for the token " park" with its leading space, which is how the word
appears in running text.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from minillama.errors import MiniLlamaError
from minillama.tokenizer.tokenizer import Tokenizer

log = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
BERT_SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
_SPACES_BEFORE_MASK = re.compile(r"\s+(?=" + re.escape(MASK) + ")")


class BertTokenizer(Tokenizer):
    """A byte-level BPE whose special tokens are BERT's; `encode` is plain text -> ids,
    `build_inputs` adds [CLS] / [SEP] and the token type ids."""

    def __init__(self, vocab: Mapping[int, bytes], merges: Sequence[tuple[bytes, bytes]],
                 special_tokens: Sequence[str] = BERT_SPECIAL_TOKENS, model_max_length: int | None = None):
        super().__init__(vocab, merges, special_tokens, eos_token=None, bos_token=None, pad_token=PAD,
                         model_max_length=model_max_length, chat_template=None)
        self._check_specials()

    def _check_specials(self) -> None:
        missing = [t for t in BERT_SPECIAL_TOKENS if self.token_to_id(t) is None]
        if missing:
            raise MiniLlamaError(f"a BERT tokenizer needs the special tokens {' '.join(BERT_SPECIAL_TOKENS)}; "
                                 f"missing {' '.join(missing)}")

    # ---- ids -----------------------------------------------------------------------------------------
    @property
    def cls_token_id(self) -> int:
        return self.token_to_id(CLS)

    @property
    def sep_token_id(self) -> int:
        return self.token_to_id(SEP)

    @property
    def mask_token_id(self) -> int:
        return self.token_to_id(MASK)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without [CLS] / [SEP]; whitespace before a [MASK] belongs to it (lstrip)."""
        return super().encode(_SPACES_BEFORE_MASK.sub("", text))

    def build_inputs(self, ids: list[int], pair: list[int] | None = None) -> tuple[list[int], list[int]]:
        """(input ids, token type ids): `[CLS] ids [SEP]`, or `[CLS] ids [SEP] pair [SEP]` with type 1
        on the second segment, exactly as the saved TemplateProcessing builds them."""
        out = [self.cls_token_id, *ids, self.sep_token_id]
        types = [0] * len(out)
        if pair is not None:
            out += [*pair, self.sep_token_id]
            types += [1] * (len(pair) + 1)
        return out, types

    def encode_for_model(self, text: str, pair: str | None = None, max_length: int | None = None
                         ) -> tuple[list[int], list[int]]:
        """(input ids, token type ids) of a text (or a pair), each segment's ids cut so that the
        whole fits `max_length` (the longer segment loses tokens first, as transformers' longest_first)."""
        a = self.encode(text)
        b = self.encode(pair) if pair is not None else None
        if max_length is not None:
            room = max_length - (2 if b is None else 3)
            if room < 1:
                raise ValueError(f"max_length {max_length} leaves no room for text between the special tokens")
            while len(a) + len(b or ()) > room:
                if b is not None and len(b) > len(a):
                    b.pop()
                else:
                    a.pop()
        return self.build_inputs(a, b)

    def special_ids(self) -> set[int]:
        return {self.token_to_id(t) for t in BERT_SPECIAL_TOKENS}

    # ---- the Hugging Face files ------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        data = super().to_hf_dict()
        for token in data["added_tokens"]:
            if token["content"] == MASK:
                token["lstrip"] = True
        cls, sep = self.cls_token_id, self.sep_token_id

        def special(token: str, type_id: int) -> dict[str, Any]:
            return {"SpecialToken": {"id": token, "type_id": type_id}}

        def sequence(name: str, type_id: int) -> dict[str, Any]:
            return {"Sequence": {"id": name, "type_id": type_id}}

        data["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [special(CLS, 0), sequence("A", 0), special(SEP, 0)],
            "pair": [special(CLS, 0), sequence("A", 0), special(SEP, 0), sequence("B", 1), special(SEP, 1)],
            "special_tokens": {CLS: {"id": CLS, "ids": [cls], "tokens": [CLS]},
                               SEP: {"id": SEP, "ids": [sep], "tokens": [SEP]}},
        }
        return data

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config.update(cls_token=CLS, sep_token=SEP, mask_token=MASK, unk_token=UNK, pad_token=PAD,
                      additional_special_tokens=[], model_input_names=["input_ids", "token_type_ids",
                                                                       "attention_mask"])
        config["added_tokens_decoder"][str(self.mask_token_id)]["lstrip"] = True
        return config

    def special_tokens_map(self) -> dict[str, Any]:
        return {"cls_token": CLS, "sep_token": SEP, "mask_token": MASK, "unk_token": UNK, "pad_token": PAD}

    @classmethod
    def from_hf_dict(cls, data: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> BertTokenizer:
        # [MASK]'s lstrip is ours (see `encode`): not worth the base class's warning
        data = dict(data, added_tokens=[{**t, "lstrip": False} if t.get("content") == MASK else t
                                        for t in data.get("added_tokens", [])])
        tokenizer = super().from_hf_dict(data, config)
        tokenizer._check_specials()
        return tokenizer


def load_bert_tokenizer(directory: str | os.PathLike) -> BertTokenizer:
    """The BERT tokenizer saved in `directory` (a model, checkpoint or tokenizer directory)."""
    return BertTokenizer.from_pretrained(directory)


def train_bert_tokenizer(inputs: str | os.PathLike | Iterable[str | os.PathLike], vocab_size: int,
                         out_dir: str | os.PathLike | None = None, *, utf8_errors: str = "strict",
                         progress: bool = False) -> BertTokenizer:
    """Train a byte-level BPE with BERT's special tokens on text files; save it in `out_dir` (atomically)."""
    from minillama.files import atomic_directory, check_output
    from minillama.tokenizer.pretokenize import as_path_list
    from minillama.tokenizer.train import train_bpe

    paths = as_path_list(inputs)
    if out_dir is not None:
        check_output(out_dir, "tokenizer", inputs=paths)
    vocab, merges = train_bpe(paths, vocab_size, BERT_SPECIAL_TOKENS, errors=utf8_errors, progress=progress)
    tokenizer = BertTokenizer(vocab, merges)
    if out_dir is not None:
        with atomic_directory(Path(out_dir), "tokenizer", inputs=paths) as tmp:
            tokenizer.save_pretrained(tmp)
    return tokenizer
