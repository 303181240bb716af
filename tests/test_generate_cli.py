"""`minillama sample` and `minillama chat` on a tiny checkpoint in tmp_path."""

import io

import pytest
import torch

from minillama.cli import main
from minillama.model import MiniLlama, ModelConfig

STORY = ("One day, Lily met a big dog in the park. The dog was happy and they played all day. "
         "Lily said: \"I like you, dog!\" The dog wagged its tail. ")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from minillama.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("cli")
    text = root / "story.txt"
    text.write_text(STORY * 20)
    tokenizer = train_tokenizer(text, vocab_size=300)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
                         initializer_range=0.2)
    directory = root / "model"
    MiniLlama(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_streams_a_continuation(checkpoint, capsys):
    code, out, err = run(capsys, "sample", "--checkpoint", str(checkpoint), "--prompt",
                         "One day, Lily met a dog", "--max-new-tokens", "12", "--temperature", "0")
    assert code == 0, err
    assert out.startswith("One day, Lily met a dog") and len(out) > len("One day, Lily met a dog") + 1
    # Greedy is deterministic; seeded sampling is reproducible.
    assert run(capsys, "sample", "--checkpoint", str(checkpoint), "--prompt", "One day, Lily met a dog",
               "--max-new-tokens", "12", "--temperature", "0")[1] == out
    seeded = ["sample", "--checkpoint", str(checkpoint), "--prompt", "Lily", "--max-new-tokens", "10",
              "--seed", "3", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.01", "--num-samples", "2"]
    first = run(capsys, *seeded)
    assert first[0] == 0 and first[1] == run(capsys, *seeded)[1] and first[1].count("---") == 1


@pytest.mark.parametrize("extra", [["--num-beams", "3"], ["--draft", "SELF", "--temperature", "0"],
                                   ["--draft", "SELF", "--draft-tokens", "2"], ["--stop", "a"],
                                   ["--repetition-penalty", "1.3"]])
def test_sample_decoding_methods_run(checkpoint, capsys, extra):
    extra = [str(checkpoint) if arg == "SELF" else arg for arg in extra]
    code, out, err = run(capsys, "sample", "--checkpoint", str(checkpoint), "--prompt", "Lily",
                         "--max-new-tokens", "10", "--seed", "0", *extra)
    assert code == 0, err
    assert out.startswith("Lily")
    if "--stop" in extra:
        assert "a" not in out[len("Lily"):]


def test_greedy_draft_gives_the_plain_greedy_text(checkpoint, capsys):
    base = ["sample", "--checkpoint", str(checkpoint), "--prompt", "The dog", "--max-new-tokens", "20",
            "--temperature", "0"]
    assert run(capsys, *base)[1] == run(capsys, *base, "--draft", str(checkpoint))[1]


def test_empty_prompt_starts_from_end_of_text(checkpoint, capsys):
    code, out, err = run(capsys, "sample", "--checkpoint", str(checkpoint), "--max-new-tokens", "5",
                         "--seed", "1")
    assert code == 0, err


@pytest.mark.parametrize("flags,message", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--num-beams", "0"], "num-beams"),
    (["--prompt", "dog " * 150], "context is 128"),
])
def test_bad_input_is_one_line_error(checkpoint, capsys, flags, message):
    code, out, err = run(capsys, "sample", "--checkpoint", str(checkpoint), "--max-new-tokens", "4", *flags)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:") and message in err


def test_truncate_keeps_the_end_of_a_long_prompt(checkpoint, capsys):
    code, out, err = run(capsys, "sample", "--checkpoint", str(checkpoint), "--prompt", "dog " * 150,
                         "--max-new-tokens", "4", "--truncate", "--temperature", "0")
    assert code == 0, err


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    code, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err


def test_numpy_engine_dispatches_or_says_why(checkpoint, capsys):
    code, out, err = run(capsys, "sample", "--checkpoint", str(checkpoint), "--prompt", "Lily",
                         "--engine", "numpy", "--max-new-tokens", "5", "--seed", "0")
    if code == 0:
        assert out.startswith("Lily")
    else:
        assert err.startswith("error:") and err.count("\n") == 1
    code, _, err = run(capsys, "sample", "--checkpoint", str(checkpoint), "--engine", "numpy",
                       "--num-beams", "2")
    assert code == 2 and "does not support --num-beams" in err


def test_chat_answers_each_turn(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello!\nTell me about the dog.\n/reset\nBye\n"))
    code, out, err = run(capsys, "chat", "--checkpoint", str(checkpoint), "--max-new-tokens", "6",
                         "--seed", "0", "--system", "You are kind.")
    assert code == 0, err
    assert out.count("\n") == 3, err  # one reply line per message
