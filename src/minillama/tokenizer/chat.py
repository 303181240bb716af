"""Chat rendering in ChatML, with the training mask of supervised fine-tuning.

    <|im_start|>system\\nYou are helpful.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n
    <|im_start|>assistant\\nHello!<|im_end|>\\n

Only what the assistant says is learned: its content tokens and the `<|im_end|>` that ends its
turn (so the model learns to stop) get `labels == ids`; every other token (system and user turns,
the `<|im_start|>role\\n` headers, the "\\n" after `<|im_end|>`) gets -100, which the loss ignores.

The ids are those of encoding the whole rendered text at once (equal to what transformers'
`apply_chat_template` gives with the saved template), so training sees exactly the tokens that
inference will. The mask comes from byte offsets: a token is learned when its bytes overlap an
assistant's content or are that turn's `<|im_end|>`. (A token can straddle the header and the
content only when the content starts with two or more whitespace characters; it is then learned.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minillama.tokenizer.tokenizer import Tokenizer

from minillama.model.config import IGNORE_INDEX  # the loss's "not learned" label

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant")


def render_chat_text(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """The ChatML text of `messages` (what the saved chat template renders)."""
    return "".join(_segments(messages, add_generation_prompt)[0])


def render_chat(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """`(ids, labels)` for a conversation; `labels` is -100 wherever the model should not learn.

    `messages` are `{"role": "system" | "user" | "assistant", "content": str}` dicts.
    `add_generation_prompt` appends `<|im_start|>assistant\\n` (to prompt a reply at inference).
    """
    for token in (IM_START, IM_END):
        if tokenizer.token_to_id(token) is None or token not in tokenizer.special_tokens:
            raise ValueError(f"the tokenizer has no special token {token}; train it with the special tokens "
                             "<|endoftext|> <|im_start|> <|im_end|>")
    segments, learned = _segments(messages, add_generation_prompt)
    text = "".join(segments)
    ids = tokenizer.encode(text)

    # Byte ranges [start, end) of the learned segments.
    spans = []
    position = 0
    for segment, is_learned in zip(segments, learned, strict=True):
        size = len(segment.encode("utf-8"))
        if is_learned:
            spans.append((position, position + size))
        position += size

    labels = []
    position, span = 0, 0
    for token_id in ids:
        start, position = position, position + len(tokenizer.id_to_bytes(token_id))
        while span < len(spans) and spans[span][1] <= start:
            span += 1
        inside = span < len(spans) and spans[span][0] < position
        labels.append(token_id if inside else IGNORE_INDEX)
    return ids, labels


def _segments(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool
              ) -> tuple[list[str], list[bool]]:
    """The rendered text as consecutive segments, each flagged learned or not."""
    if isinstance(messages, (str, Mapping)):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    segments: list[str] = []
    learned: list[bool] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"message {index} must be a dict with 'role' and 'content', got {message!r:.80}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"message {index} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"message {index} content must be a string, got {type(content).__name__}")
        is_assistant = role == "assistant"
        segments += [f"{IM_START}{role}\n", content, IM_END, "\n"]
        learned += [False, is_assistant, is_assistant, False]
    if add_generation_prompt:
        segments.append(f"{IM_START}assistant\n")
        learned.append(False)
    return segments, learned
