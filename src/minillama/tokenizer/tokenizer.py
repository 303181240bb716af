"""The byte-level BPE tokenizer: encoding, decoding and the Hugging Face file formats.

Encoding a text: split it at special tokens (the longest wins where they overlap), cut each piece
into pre-tokens with the GPT-2 regex, turn a pre-token into its UTF-8 bytes and apply the merges
in rank order (lowest rank first, every occurrence left to right) until none applies. The ids are
exactly those of `tokenizers` loading our tokenizer.json, so bulk encoding may use it for speed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import regex

from minillama.errors import MiniLlamaError
from minillama.files import MANIFEST, atomic_directory, atomic_write_text, update_manifest
from minillama.tokenizer.pretokenize import (
    GPT2_PATTERN,
    SpecialSplitter,
    bytes_to_token_str,
    compile_pattern,
    pretokenizer,
    token_str_to_bytes,
)

log = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# ChatML, the chat format of Qwen2: <|im_start|>{role}\n{content}<|im_end|>\n per message.
# `chat.render_chat` renders the same text (with the training mask); tests hold them equal.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown chat role ' + message['role'] + '; use system, user or assistant') }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_LAST_ASCII = regex.compile(r"(?r)[\x00-\x7f]")
_DEFAULT: Any = object()  # "not given" for arguments where None is meaningful
_CACHE_LIMIT = 1 << 17  # distinct pre-tokens remembered by `encode`
_STREAM_CHUNK = 1 << 16  # characters gathered by `encode_iterable` before encoding a piece


class Tokenizer:
    """Byte-level BPE tokenizer.

    `vocab` maps id -> token bytes, `merges` lists merged pairs in rank order (as `train_bpe`
    returns them). A special token whose bytes are already in `vocab` keeps that id; others get new
    ids after the largest one.
    """

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Sequence[str] | None = None,
        *,
        eos_token: str | None = _DEFAULT,
        bos_token: str | None = None,
        pad_token: str | None = _DEFAULT,
        model_max_length: int | None = None,
        chat_template: str | None = _DEFAULT,
    ):
        vocab = {int(i): bytes(b) for i, b in vocab.items()}
        first_id: dict[bytes, int] = {}
        for i in sorted(vocab):
            first_id.setdefault(vocab[i], i)
        added: dict[str, int] = {}
        next_id = max(vocab, default=-1) + 1
        for token in dict.fromkeys(special_tokens or ()):
            if not token:
                raise ValueError("special tokens must be non-empty strings")
            existing = first_id.get(token.encode("utf-8"))
            if existing is None:
                existing, next_id = next_id, next_id + 1
            added[token] = existing
        self._setup(vocab, list(merges), added, {t: True for t in added})
        self._configure(eos_token, bos_token, pad_token, model_max_length, chat_template)

    def _setup(self, model_vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], added: dict[str, int],
               special: dict[str, bool], pattern: str = GPT2_PATTERN, normalizer: str | None = None,
               ignore_merges: bool = False) -> None:
        # A special token may also be in the model's vocab (ours are: ids 0, 1, 2), sharing its id,
        # as in `tokenizers`; it is split out of the text before BPE, so merges never see it.
        self._model_vocab = model_vocab
        self._merges = merges
        self._added = added
        self._added_by_id = {i: t for t, i in added.items()}
        self._special = special
        self._pattern = pattern
        self._normalizer = normalizer
        self._ignore_merges = ignore_merges
        self._bytes_to_id: dict[bytes, int] = {}
        for i in sorted(model_vocab):
            self._bytes_to_id.setdefault(model_vocab[i], i)
        missing = [b for b in range(256) if bytes([b]) not in self._bytes_to_id]
        if missing:
            raise ValueError(f"the vocab lacks {len(missing)} single bytes (first: 0x{missing[0]:02x}); "
                             "a byte-level BPE vocab must contain all 256")
        self._byte_ids = [self._bytes_to_id[bytes([b])] for b in range(256)]
        # (left id, right id) -> (rank, merged id); a repeated pair keeps its last rank, as in `tokenizers`.
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(merges):
            ids = self._bytes_to_id.get(a), self._bytes_to_id.get(b), self._bytes_to_id.get(a + b)
            if None in ids:
                raise ValueError(f"merge {rank} ({a!r}, {b!r}) uses or makes a token not in the vocab")
            self._ranks[ids[0], ids[1]] = (rank, ids[2])
        size = max([*model_vocab, *added.values()], default=-1) + 1
        self._id_bytes: list[bytes | None] = [None] * size
        for i, b in model_vocab.items():
            self._id_bytes[i] = b
        for token, i in added.items():
            self._id_bytes[i] = token.encode("utf-8")
        self._special_ids = {i for t, i in added.items() if special.get(t, True)}
        self._splitter = SpecialSplitter(list(added))
        self._pretokenize = pretokenizer(pattern)
        self._cache: dict[str, list[int]] = {}
        self._hf_backend: Any = None

    def _configure(self, eos_token, bos_token, pad_token, model_max_length, chat_template) -> None:
        if eos_token is _DEFAULT:
            eos_token = ENDOFTEXT if ENDOFTEXT in self._added else None
        if pad_token is _DEFAULT:
            pad_token = eos_token
        if chat_template is _DEFAULT:  # ChatML when the tokenizer has its tokens
            chat_template = CHATML_TEMPLATE if {"<|im_start|>", "<|im_end|>"} <= self._added.keys() else None
        for name, token in (("eos_token", eos_token), ("bos_token", bos_token), ("pad_token", pad_token)):
            if token is not None and self.token_to_id(token) is None:
                raise ValueError(f"{name} {token!r} is not a token of this tokenizer (special tokens: "
                                 f"{list(self._added)})")
        self.eos_token, self.bos_token, self.pad_token = eos_token, bos_token, pad_token
        self.model_max_length = model_max_length
        self.chat_template = chat_template

    # Properties -------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1), special tokens included: the embedding table's size."""
        return len(self._id_bytes)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_tokens(self) -> list[str]:
        return [t for t in self._added if self._special.get(t, True)]

    @property
    def eos_token_id(self) -> int | None:
        """Id of the end-of-text token (`<|endoftext|>` unless configured otherwise)."""
        return self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def pad_token_id(self) -> int | None:
        """Id used for padding; the end-of-text token unless configured otherwise."""
        return self.token_to_id(self.pad_token) if self.pad_token else None

    @property
    def vocab(self) -> dict[int, bytes]:
        """id -> bytes for every id, special tokens included."""
        return {i: b for i, b in enumerate(self._id_bytes) if b is not None}

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        return list(self._merges)

    def token_to_id(self, token: str) -> int | None:
        """Id of a special token, or of a token in its byte-level spelling ('Ġthe' for ' the')."""
        if token in self._added:
            return self._added[token]
        try:
            return self._bytes_to_id.get(token_str_to_bytes(token))
        except ValueError:
            return None

    def id_to_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (a special token's UTF-8 text)."""
        token = self._id_bytes[token_id] if 0 <= token_id < len(self._id_bytes) else None
        if token is None:
            raise ValueError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return token

    def id_to_token(self, token_id: int) -> str | None:
        """A special token's text, or a token's byte-level spelling; None for an unused id."""
        if not 0 <= token_id < len(self._id_bytes) or self._id_bytes[token_id] is None:
            return None
        if token_id in self._added_by_id:
            return self._added_by_id[token_id]
        return bytes_to_token_str(self._model_vocab[token_id])

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
                f"special_tokens={self.special_tokens})")

    def __getstate__(self) -> dict[str, Any]:  # picklable, e.g. for worker processes
        state = self.__dict__.copy()
        state.update(_pretokenize=None, _cache={}, _hf_backend=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pretokenize = pretokenizer(self._pattern)

    # Encoding ---------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens in the text become their ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__}")
        ids: list[int] = []
        for piece, is_special in self._splitter.parts(text):
            if is_special:
                ids.append(self._added[piece])
            else:
                self._encode_ordinary(piece, ids)
        return ids

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        if self._normalizer:
            text = unicodedata.normalize(self._normalizer, text)
        cache = self._cache
        for word in self._pretokenize(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe(word)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _bpe(self, word: str) -> list[int]:
        data = word.encode("utf-8")
        if self._ignore_merges and data in self._bytes_to_id:
            return [self._bytes_to_id[data]]
        byte_ids = self._byte_ids
        ids = [byte_ids[b] for b in data]
        ranks = self._ranks
        while len(ids) > 1:
            best = None
            for pair in pairwise(ids):
                found = ranks.get(pair)
                if found is not None and (best is None or found[0] < best[0]):
                    best, best_pair = found, pair
            if best is None:
                break
            a, b = best_pair
            new = best[1]
            merged = []
            i, n = 0, len(ids)
            while i < n:
                if ids[i] == a and i + 1 < n and ids[i + 1] == b:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            ids = merged
        return ids

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Ids of the concatenation of `iterable` (e.g. an open text file), lazily, in constant
        memory: text is encoded in pieces cut where the cut cannot change the result."""
        if self._pattern == GPT2_PATTERN and not self._normalizer:
            safe_cut = self._splitter.safe_cut  # cheap and exact for GPT-2's pattern
        else:
            safe_cut = self._before_last_pretoken
            if self._normalizer:
                iterable = self._normalized(iterable)
        parts: list[str] = []
        size = 0
        for chunk in iterable:
            parts.append(chunk)
            size += len(chunk)
            if size < _STREAM_CHUNK:
                continue
            buffer = "".join(parts)
            cut = safe_cut(buffer)
            if cut:
                yield from self.encode(buffer[:cut])
                buffer = buffer[cut:]
            parts, size = [buffer], len(buffer)
        if parts:
            yield from self.encode("".join(parts))

    def _before_last_pretoken(self, text: str) -> int:
        """Cut point for other pre-tokenizer patterns: the start of the last pre-token (the
        patterns in use look at most one character past a pre-token, so all earlier ones are
        settled), and never inside or just after an unsettled special token."""
        cut, limit = self._splitter.special_cut(text)
        starts = [m.start() for m in compile_pattern(self._pattern).finditer(text, cut, max(limit, cut))]
        return starts[-1] if len(starts) > 1 else cut

    def _normalized(self, iterable: Iterable[str]) -> Iterator[str]:
        """The normalized stream, normalized in pieces cut before an ASCII character: no Unicode
        normalization composes or reorders across one, so the pieces equal the normalized whole
        (and normalizing again in `encode` changes nothing)."""
        pending = ""
        for chunk in iterable:
            pending += chunk
            last_ascii = _LAST_ASCII.search(pending, 1)
            if last_ascii:
                yield unicodedata.normalize(self._normalizer, pending[:last_ascii.start()])
                pending = pending[last_ascii.start():]
        if pending:
            yield unicodedata.normalize(self._normalizer, pending)

    def encode_batch(self, texts: Sequence[str], *, backend: str = "python") -> list[list[int]]:
        """Ids of many texts. `backend="tokenizers"` runs the `tokenizers` library (Rust, on all
        cores) on our tokenizer.json: identical ids, faster on many cores or on text with many
        distinct words. On the 2-core TinyStories setup our cached encoder is the faster one
        (see benchmarks/bench_tokenizer.py), hence the default."""
        if backend not in ("tokenizers", "python"):
            raise ValueError(f"backend must be 'python' or 'tokenizers', not {backend!r}")
        texts = list(texts)
        if backend == "tokenizers":
            hf = self._tokenizers_backend()
            encode = getattr(hf, "encode_batch_fast", hf.encode_batch)
            return [e.ids for e in encode(texts, add_special_tokens=False)]
        return [self.encode(t) for t in texts]

    def _tokenizers_backend(self):
        if self._hf_backend is None:
            from tokenizers import Tokenizer as HFTokenizer

            self._hf_backend = HFTokenizer.from_str(json.dumps(self.to_hf_dict()))
        return self._hf_backend

    # Decoding ---------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = False) -> bytes:
        if hasattr(ids, "tolist"):  # tensors and arrays
            ids = ids.tolist()
        table = self._id_bytes
        try:
            if skip_special_tokens:
                special = self._special_ids
                return b"".join(table[i] for i in ids if i not in special)
            return b"".join(table[i] for i in ids)
        except (IndexError, TypeError):
            ids = list(ids)
            bad = next((i for i in ids
                        if not isinstance(i, int) or not 0 <= i < len(table) or table[i] is None), None)
            raise ValueError(f"token id {bad!r} is not in the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    # Hugging Face tokenizer.json ------------------------------------------------------------------

    def to_hf_dict(self) -> dict[str, Any]:
        """The content of tokenizer.json (the `tokenizers` library's format)."""
        added_tokens = [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": self._special.get(t, True)}
            for t, i in sorted(self._added.items(), key=lambda item: item[1])
        ]
        if self._pattern == GPT2_PATTERN:
            pre_tokenizer = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True}
        else:
            pre_tokenizer = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": self._pattern}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ]}
        # Special tokens are listed in the model's vocab too (as `tokenizers`' trainer does): that is
        # how `tokenizers` keeps their ids when the vocab has gaps.
        vocab = {bytes_to_token_str(b): i for i, b in self._model_vocab.items() if i not in self._added_by_id}
        vocab.update((t, i) for t, i in self._added.items())
        vocab = dict(sorted(vocab.items(), key=lambda item: item[1]))
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added_tokens,
            "normalizer": {"type": self._normalizer} if self._normalizer else None,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                               "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                "ignore_merges": self._ignore_merges, "vocab": vocab,
                "merges": [f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in self._merges],
            },
        }

    def fingerprint(self) -> str:
        """sha256 of the canonical tokenizer.json content: equal fingerprints, equal ids."""
        canonical = json.dumps(self.to_hf_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def config_dict(self) -> dict[str, Any]:
        """The content of tokenizer_config.json (read by transformers' AutoTokenizer)."""
        extra = [t for t in self.special_tokens if t not in (self.eos_token, self.bos_token, self.pad_token)]
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": None,
            "additional_special_tokens": extra,
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": {
                str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": self._special.get(t, True)}
                for t, i in sorted(self._added.items(), key=lambda item: item[1])
            },
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        return config

    def special_tokens_map(self) -> dict[str, Any]:
        named = {name: getattr(self, name) for name in ("bos_token", "eos_token", "pad_token")}
        extra = [t for t in self.special_tokens if t not in named.values()]
        return {k: v for k, v in named.items() if v is not None} | {"additional_special_tokens": extra}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`,
        which `from_pretrained` and `transformers.AutoTokenizer.from_pretrained` load.

        A new directory appears complete or not at all. Into an existing one (e.g. a model export)
        each file is replaced atomically, and a checksum manifest there is brought up to date.
        """
        directory = Path(directory)
        contents = {TOKENIZER_FILE: self.to_hf_dict(), CONFIG_FILE: self.config_dict(),
                    SPECIAL_TOKENS_MAP_FILE: self.special_tokens_map()}
        files = {name: json.dumps(data, indent=2, ensure_ascii=False) + "\n"
                 for name, data in contents.items()}
        if not directory.exists():
            with atomic_directory(directory, "tokenizer") as tmp:
                for name, text in files.items():
                    (tmp / name).write_text(text, encoding="utf-8")
            return directory
        if not directory.is_dir():
            raise FileExistsError(f"{directory} exists and is not a directory")
        for name, text in files.items():
            atomic_write_text(directory / name, text)
        if (directory / MANIFEST).exists():
            update_manifest(directory, list(files))
        return directory

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a directory holding tokenizer.json (and optionally tokenizer_config.json), or a
        tokenizer.json file itself."""
        path = Path(path)
        if path.is_dir():
            tokenizer_file = path / TOKENIZER_FILE
        else:
            tokenizer_file = path
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}: expected a directory with {TOKENIZER_FILE} or "
                                    "the file itself (train one with `minillama tokenizer train --out DIR`)")
        data = _read_json(tokenizer_file)
        config_file = tokenizer_file.parent / CONFIG_FILE
        config = _read_json(config_file) if config_file.is_file() else None
        template_file = tokenizer_file.parent / "chat_template.jinja"
        if config is not None and "chat_template" not in config and template_file.is_file():
            config["chat_template"] = template_file.read_text(encoding="utf-8")
        try:
            return cls.from_hf_dict(data, config)
        except (KeyError, TypeError, ValueError) as exc:
            raise MiniLlamaError(f"{tokenizer_file} is not a byte-level BPE tokenizer minillama reads: "
                                 f"{exc}") from None

    @classmethod
    def from_hf_dict(cls, data: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> Tokenizer:
        """Build from the content of tokenizer.json (and of tokenizer_config.json)."""
        model = data["model"]
        if model.get("type", "BPE") != "BPE":
            raise ValueError(f"model type {model.get('type')!r}; only BPE is supported")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise ValueError(f"model.{key}={model[key]!r} is not supported")
        if model.get("byte_fallback") or model.get("dropout"):
            raise ValueError("byte_fallback and dropout are not supported")
        pattern = _pattern_from_pre_tokenizer(data.get("pre_tokenizer"))
        normalizer = data.get("normalizer")
        if normalizer is not None and normalizer.get("type") not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"normalizer {normalizer.get('type')!r} is not supported")
        added_content = {int(t["id"]): t["content"] for t in data.get("added_tokens", [])}
        model_vocab = {int(i): added_content[int(i)].encode("utf-8") if int(i) in added_content
                       else token_str_to_bytes(t) for t, i in model["vocab"].items()}
        merges = []
        for merge in model.get("merges", []):
            a, b = merge.split(" ") if isinstance(merge, str) else merge
            merges.append((token_str_to_bytes(a), token_str_to_bytes(b)))
        added: dict[str, int] = {}
        special: dict[str, bool] = {}
        for token in data.get("added_tokens", []):
            if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
                log.warning("added token %r: lstrip/rstrip/single_word are ignored", token["content"])
            added[token["content"]] = int(token["id"])
            special[token["content"]] = bool(token.get("special", True))
        tok = cls.__new__(cls)
        tok._setup(model_vocab, merges, added, special, pattern,
                   normalizer["type"] if normalizer else None, bool(model.get("ignore_merges", False)))
        if config is None:  # a bare tokenizer.json: the defaults
            tok._configure(_DEFAULT, None, _DEFAULT, None, _DEFAULT)
        else:
            max_length = config.get("model_max_length")
            tok._configure(
                _token_name(config.get("eos_token", _DEFAULT)),
                _token_name(config.get("bos_token")),
                _token_name(config.get("pad_token", _DEFAULT)),
                max_length if isinstance(max_length, int) and max_length < 1 << 40 else None,
                _chat_template(config.get("chat_template")),
            )
        return tok

    @classmethod
    def from_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike,
                   special_tokens: Sequence[str] | None = None, **kwargs: Any) -> Tokenizer:
        """Load GPT-2 style `vocab.json` (byte-level token -> id) and `merges.txt` ('a b' per line).
        A special token listed in vocab.json keeps its id (GPT-2's <|endoftext|> is 50256)."""
        raw_vocab = _read_json(Path(vocab_json))
        specials = list(dict.fromkeys(special_tokens or ()))
        vocab: dict[int, bytes] = {}
        for token, i in raw_vocab.items():
            try:
                vocab[int(i)] = token_str_to_bytes(token)
            except ValueError:
                if token not in specials:
                    raise MiniLlamaError(f"{vocab_json}: {token!r} is not a byte-level token") from None
                vocab[int(i)] = token.encode("utf-8")
        merges = []
        try:
            with open(merges_txt, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    line = line.rstrip("\r\n")
                    if not line or (number == 1 and line.startswith("#version")):
                        continue
                    parts = line.split(" ")
                    if len(parts) != 2:
                        raise MiniLlamaError(f"{merges_txt}:{number}: expected two tokens and one space")
                    merges.append((token_str_to_bytes(parts[0]), token_str_to_bytes(parts[1])))
        except ValueError as exc:
            raise MiniLlamaError(f"{merges_txt}: {exc}") from None
        return cls(vocab, merges, specials, **kwargs)


def _pattern_from_pre_tokenizer(pre: Mapping[str, Any] | None) -> str:
    def byte_level(p: Mapping[str, Any], regex_expected: bool) -> None:
        if p.get("add_prefix_space"):
            raise ValueError("ByteLevel add_prefix_space=true is not supported")
        if p.get("use_regex", True) != regex_expected:
            raise ValueError(f"ByteLevel use_regex={p.get('use_regex', True)} is not supported here")

    if pre and pre.get("type") == "ByteLevel":
        byte_level(pre, True)
        return GPT2_PATTERN
    if pre and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel"
                and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert")
                and "Regex" in parts[0].get("pattern", {})):
            byte_level(parts[1], False)
            return parts[0]["pattern"]["Regex"]
    raise ValueError(f"pre_tokenizer {json.dumps(pre)[:120]} is not supported (expected ByteLevel, or "
                     "Split + ByteLevel)")


def _token_name(value: Any) -> Any:
    if isinstance(value, Mapping):  # older files store AddedToken dicts
        return value.get("content")
    return value


def _chat_template(value: Any) -> str | None:
    if isinstance(value, list):  # named templates: take "default", else the first
        named = {t.get("name"): t.get("template") for t in value}
        return named.get("default", next(iter(named.values()), None))
    return value


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MiniLlamaError(f"{path} is not valid JSON ({exc}); the file is damaged, re-create it") from None
