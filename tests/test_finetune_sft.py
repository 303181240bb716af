"""SFT: the assistant mask (hand-checked), truncation, the loss against a manual cross-entropy,
label smoothing, resumable batches, the TinyStories instruction set, and an end-to-end run."""

import io
import json

import pytest
import torch
import torch.nn.functional as F

from minillama.finetune.batches import IGNORE_INDEX, Example, ExampleBatches, pad_batch
from minillama.finetune.sft import sft_loss
from minillama.finetune.sft_data import (
    STORY_PROMPT,
    load_conversations,
    to_messages,
    tokenize_conversations,
    truncate,
)
from minillama.model import MiniLlama, ModelConfig
from minillama.tokenizer import Tokenizer, render_chat

SINGLE = [{"role": "user", "content": "Tell me a story."},
          {"role": "assistant", "content": "Once upon a time, a cat sat."}]
MULTI = [{"role": "system", "content": "You are kind."},
         {"role": "user", "content": "Hi!"},
         {"role": "assistant", "content": "Hello there."},
         {"role": "user", "content": "What is 2 + 2?"},
         {"role": "assistant", "content": "It is 4."}]


pytestmark = pytest.mark.usefixtures("keep_thread_count")  # the runs below use one thread


def hand_rendered(tokenizer, messages):
    """Expected (ids, labels) built turn by turn: headers and user/system turns -100, each
    assistant content + its <|im_end|> learned, the newline after <|im_end|> not."""
    im_end = tokenizer.token_to_id("<|im_end|>")
    ids, labels = [], []
    for message in messages:
        header = tokenizer.encode(f"<|im_start|>{message['role']}\n")
        content = tokenizer.encode(message["content"])
        newline = tokenizer.encode("\n")
        learned = message["role"] == "assistant"
        ids += header + content + [im_end] + newline
        labels += [IGNORE_INDEX] * len(header) + (content + [im_end] if learned else
                                                  [IGNORE_INDEX] * (len(content) + 1)) + [IGNORE_INDEX]
    return ids, labels


@pytest.mark.parametrize("messages", [SINGLE, MULTI], ids=["single-turn", "multi-turn"])
def test_mask_matches_the_hand_built_one(tokenizer, messages):
    ids, labels = render_chat(tokenizer, messages)
    assert (ids, labels) == hand_rendered(tokenizer, messages)
    learned = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
    replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert learned == "".join(replies)


def test_the_first_assistant_token_is_trained(tokenizer):
    ids, labels = render_chat(tokenizer, SINGLE)
    prompt = tokenizer.encode("<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n")
    first = len(prompt)
    assert ids[:first] == prompt and labels[:first] == [IGNORE_INDEX] * first
    assert labels[first] == ids[first] == tokenizer.encode("Once")[0]
    # After the model's shift, the header's last position ("\n") is the one that predicts it.
    batch = pad_batch([Example(ids, labels)], pad_token_id=0)
    targets = F.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)[0, 1:]
    assert targets[first - 1] == ids[first] and (targets[:first - 1] == IGNORE_INDEX).all()


def test_alpaca_and_chat_records():
    record = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    assert to_messages(record) == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                   {"role": "assistant", "content": "5"}]
    assert to_messages({"instruction": "Hi", "input": "", "output": "Hello", "system": "Be brief."})[0] == \
        {"role": "system", "content": "Be brief."}
    assert to_messages({"messages": MULTI}) == MULTI
    with pytest.raises(Exception, match="messages"):
        to_messages({"text": "no"})


def test_truncation_keeps_every_label_on_its_token(tokenizer):
    ids, labels = render_chat(tokenizer, MULTI)
    for max_len in range(1, len(ids) + 2):
        cut_ids, cut_labels = truncate(ids, labels, max_len)
        assert cut_ids == ids[:max_len] and cut_labels == labels[:max_len]
        assert all(label in (token, IGNORE_INDEX) for token, label in zip(cut_ids, cut_labels, strict=True))
    header = len(tokenizer.encode("<|im_start|>system\nYou are kind.<|im_end|>\n"
                                  "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"))
    examples = tokenize_conversations(tokenizer, [MULTI, SINGLE], header)  # MULTI: no reply token fits
    assert len(examples) == 1 and examples[0].ids == render_chat(tokenizer, SINGLE)[0][:header]


@pytest.fixture(scope="module")
def model_and_batch(tokenizer):
    torch.manual_seed(0)
    config = ModelConfig.from_preset("debug", vocab_size=tokenizer.vocab_size, initializer_range=0.2)
    model = MiniLlama(config).eval()
    examples = [Example(*render_chat(tokenizer, messages)) for messages in (SINGLE, MULTI)]
    return model, examples, pad_batch(examples, pad_token_id=tokenizer.pad_token_id)


def test_loss_equals_a_manual_cross_entropy_over_the_learned_tokens(model_and_batch):
    model, examples, batch = model_and_batch
    terms = []
    for example in examples:  # each conversation alone, unpadded
        log_probs = torch.log_softmax(model(torch.tensor([example.ids])).logits[0].double(), dim=-1)
        for t in range(len(example.ids) - 1):
            if example.labels[t + 1] != IGNORE_INDEX:
                terms.append(-log_probs[t, example.labels[t + 1]])
    manual = torch.stack(terms).mean()
    assert len(terms) == sum(label != IGNORE_INDEX for e in examples for label in e.labels)
    with torch.no_grad():
        loss = sft_loss(model, batch)
        masked = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(loss.double(), manual, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked, loss, rtol=1e-6, atol=1e-6)  # right padding: the mask changes nothing


def test_label_smoothing_equals_torch_and_the_formula(model_and_batch):
    model, _, batch = model_and_batch
    eps = 0.1
    with torch.no_grad():
        loss = sft_loss(model, batch, label_smoothing=eps)
        logits = model(batch["input_ids"]).logits[:, :-1].flatten(0, 1)
    targets = batch["labels"][:, 1:].flatten()
    reference = F.cross_entropy(logits, targets, label_smoothing=eps, ignore_index=-100)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    keep = targets != -100
    log_probs = torch.log_softmax(logits[keep].double(), dim=-1)
    nll = -log_probs.gather(1, targets[keep, None]).squeeze(1)
    formula = ((1 - eps) * nll - eps * log_probs.mean(-1)).mean()  # smoothed target: eps spread uniformly
    torch.testing.assert_close(loss.double(), formula, rtol=1e-5, atol=1e-5)
    assert not torch.isclose(loss, sft_loss(model, batch))


def test_padding_puts_minus_100_on_pads():
    batch = pad_batch([Example([5, 6, 7], [-100, 6, 7]), Example([8], [8])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_batches_resume_exactly_and_ranks_split_the_global_batch():
    examples = [Example([i, i + 1], [i, i + 1]) for i in range(23)]

    def first_ids(batch):
        return batch["input_ids"][:, 0].tolist()

    loader = ExampleBatches(examples, 4, lambda b: pad_batch(b, 0), seed=3)
    for _ in range(7):  # crosses an epoch boundary (5 batches per epoch)
        next(loader)
    state = json.loads(json.dumps(loader.state_dict()))
    expected = [first_ids(next(loader)) for _ in range(6)]
    resumed = ExampleBatches(examples, 4, lambda b: pad_batch(b, 0), seed=3)
    resumed.load_state_dict(state)
    assert [first_ids(next(resumed)) for _ in range(6)] == expected
    ranks = [ExampleBatches(examples, 2, lambda b: pad_batch(b, 0), seed=3, rank=rank, world_size=2)
             for rank in (0, 1)]
    single = ExampleBatches(examples, 4, lambda b: pad_batch(b, 0), seed=3)
    for _ in range(8):
        assert first_ids(next(ranks[0])) + first_ids(next(ranks[1])) == first_ids(next(single))


def test_tinystories_instructions_are_built_from_the_embedded_stories():
    train, val = load_conversations("tinystories-instruct")
    assert len(train) > 3000 and len(val) > 100
    for messages in train[:50] + val[:50]:
        user, assistant = messages
        first = user["content"].removeprefix(STORY_PROMPT.format(first=""))
        assert user["content"].startswith("Write a story that starts with: ") and first
        assert assistant["content"].startswith(first) and len(assistant["content"]) > len(first)
    assert {m[1]["content"] for m in train}.isdisjoint(m[1]["content"] for m in val)


@pytest.fixture(scope="module")
def base_dir(small_corpus, tmp_path_factory):
    """A random debug-size model with the small tokenizer, exported as a model directory."""
    from minillama.export import save_hf

    tokenizer = Tokenizer.from_pretrained(small_corpus[0])
    torch.manual_seed(0)
    config = ModelConfig.from_preset("debug", vocab_size=tokenizer.vocab_size, max_position_embeddings=256,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return save_hf(MiniLlama(config), tmp_path_factory.mktemp("sft") / "base", tokenizer)


def test_sft_cli_learns_the_instructions_and_the_result_chats(base_dir, tmp_path, capsys, monkeypatch):
    from minillama.cli import main
    from minillama.finetune.sft import evaluate_sft
    from minillama.generate import generate_text
    from minillama.tokenizer.chat import render_chat_text

    tokenizer = Tokenizer.from_pretrained(base_dir)
    _, val = load_conversations("tinystories-instruct")
    val_examples = tokenize_conversations(tokenizer, val[:64], 256)
    with torch.no_grad():
        before = evaluate_sft(MiniLlama.from_pretrained(base_dir), val_examples, 16, 0, torch.device("cpu"))
    out = tmp_path / "run"
    assert main(["sft", "--base", str(base_dir), "--data", "tinystories-instruct", "--budget.max_steps", "40",
                 "--optim.lr", "3e-3", "--data.batch_size", "8", "--run.out_dir", str(out), "--run.precision",
                 "float32", "--run.progress", "false", "--run.eval_interval", "40", "--run.eval_batches", "4",
                 "--run.plot", "false", "--run.threads", "1"]) == 0
    assert f"model: {out / 'model'}" in capsys.readouterr().out
    model = MiniLlama.from_pretrained(out / "model").eval()
    with torch.no_grad():
        after = evaluate_sft(model, val_examples, 16, 0, torch.device("cpu"))
    assert after < before - 1.0, (before, after)
    im_end = tokenizer.token_to_id("<|im_end|>")
    assert model.config.eos_token_id == im_end  # generation stops at the end of the turn
    exported = json.loads((out / "model" / "generation_config.json").read_text())
    assert exported["eos_token_id"] == im_end
    prompt = render_chat_text(val[0][:1], add_generation_prompt=True)
    reply = generate_text(model, Tokenizer.from_pretrained(out / "model"), prompt, max_new_tokens=40,
                          temperature=0.0)
    assert reply and "<|im_start|>" not in reply
    # `minillama chat` (the generation package's) talks to the result: a turn, then /exit.
    monkeypatch.setattr("sys.stdin", io.StringIO(val[0][0]["content"] + "\n/exit\n"))
    assert main(["chat", "--checkpoint", str(out / "model"), "--temperature", "0", "--max-new-tokens", "40"]) == 0
    assert capsys.readouterr().out.strip() == reply.strip()
