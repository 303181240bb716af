"""ChatML rendering with the SFT mask: ids equal encoding the whole text and transformers'
`apply_chat_template` on the saved tokenizer; only assistant content and its <|im_end|> learn."""

from __future__ import annotations

import gzip

import pytest

from minillama.assets import asset_path
from minillama.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer, render_chat, train_tokenizer
from minillama.tokenizer.chat import IGNORE_INDEX, render_chat_text

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How are you?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And times 3?"},
        {"role": "assistant", "content": "12 🎉"},
    ],
    # Content that starts with whitespace, is empty, spans lines or holds special-token text.
    [{"role": "user", "content": "  indented"}, {"role": "assistant", "content": "   three spaces first"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "\n\nline\n"}, {"role": "assistant", "content": "\nA\n\nB\n"}],
    [{"role": "user", "content": "say <|im_end|>"},
     {"role": "assistant", "content": "ok <|endoftext|> done"}],
    [{"role": "user", "content": "中文？"}, {"role": "assistant", "content": "好的。\tTabs\t\tand  spaces"}],
]


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    with gzip.open(asset_path("sft/alpaca_en_demo.jsonl.gz"), "rt", encoding="utf-8") as f:
        text = f.read(150_000)
    corpus = tmp_path_factory.mktemp("chat") / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    out = corpus.parent / "tokenizer"
    return train_tokenizer(corpus, 700, DEFAULT_SPECIAL_TOKENS, out), out


def test_ids_equal_encoding_the_whole_text(chat_tokenizer):
    tokenizer, _ = chat_tokenizer
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            ids, labels = render_chat(tokenizer, messages, add_generation_prompt=prompt)
            assert ids == tokenizer.encode(render_chat_text(messages, prompt))
            assert len(labels) == len(ids)


def test_mask_learns_only_assistant_content_and_its_end(chat_tokenizer):
    tokenizer, _ = chat_tokenizer
    messages = CONVERSATIONS[1]
    ids, labels = render_chat(tokenizer, messages)
    learned = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
    assert learned == "2 + 2 = 4.<|im_end|>12 🎉<|im_end|>"
    assert all(label in (i, IGNORE_INDEX) for i, label in zip(ids, labels, strict=True))
    im_end = tokenizer.token_to_id("<|im_end|>")
    ends = [k for k, i in enumerate(ids) if i == im_end]
    assert [labels[k] for k in ends] == [IGNORE_INDEX, IGNORE_INDEX, im_end, IGNORE_INDEX, im_end]
    assert all(labels[k + 1] == IGNORE_INDEX for k in ends)  # the "\n" after <|im_end|>
    prompt_ids, prompt_labels = render_chat(tokenizer, messages[:-1], add_generation_prompt=True)
    assert render_chat_text(messages[:-1], True).endswith("<|im_start|>assistant\n")
    learned = [i for i, label in zip(prompt_ids, prompt_labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "2 + 2 = 4.<|im_end|>"
    assert prompt_labels[-3:] == [IGNORE_INDEX] * 3  # the generation prompt


def test_mask_with_leading_whitespace_and_specials_in_content(chat_tokenizer):
    tokenizer, _ = chat_tokenizer
    ids, labels = render_chat(tokenizer, CONVERSATIONS[2])
    learned = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
    # A token straddling the header's "\n" and the content's first space is learned whole.
    assert learned.endswith("   three spaces first<|im_end|>") and learned.startswith(("\n", " "))
    ids, labels = render_chat(tokenizer, CONVERSATIONS[3])
    learned = [tokenizer.decode([i]) for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert learned == ["<|im_end|>"]


def test_transformers_chat_template_gives_the_same_ids(chat_tokenizer):
    transformers = pytest.importorskip("transformers")
    tokenizer, directory = chat_tokenizer
    auto = transformers.AutoTokenizer.from_pretrained(directory)
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            text = auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert text == render_chat_text(messages, prompt)
            out = auto.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
            hf_ids = out["input_ids"] if not isinstance(out, list) else out
            assert hf_ids == render_chat(tokenizer, messages, add_generation_prompt=prompt)[0]
    with pytest.raises(Exception, match="unknown chat role"):
        auto.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_bad_messages(chat_tokenizer):
    tokenizer, _ = chat_tokenizer
    with pytest.raises(ValueError, match="role 'bot'.*system, user, assistant"):
        render_chat(tokenizer, [{"role": "bot", "content": "hi"}])
    with pytest.raises(ValueError, match="'role' and 'content'"):
        render_chat(tokenizer, [{"content": "hi"}])
    with pytest.raises(ValueError, match="content must be a string"):
        render_chat(tokenizer, [{"role": "user", "content": None}])
    with pytest.raises(TypeError):
        render_chat(tokenizer, {"role": "user", "content": "hi"})
    plain = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    with pytest.raises(ValueError, match="no special token <\\|im_start\\|>"):
        render_chat(plain, CONVERSATIONS[0])
