"""Bad input, as a hostile new user gives it, to every command that reads or writes files.

For each case: exit code 2, one line on stderr that starts with "error:" and names the problem,
no traceback, and the sandbox (a real run directory, its export, a corpus folder, a plain file,
a foreign folder...) byte-for-byte unchanged outside the command's own new output. The `--out`
cases point every writing command at each kind of existing path.
"""

import gzip
import hashlib
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch

from minillama.assets import asset_path
from minillama.cli import main
from minillama.files import DirectoryLock

pytest.importorskip("transformers")


def _stories(count: int) -> str:
    with gzip.open(asset_path("tinystories/tinystories_train.txt.gz"), "rt", encoding="utf-8") as f:
        text = "".join(itertools.islice(f, 40 * count))
    return text[: text.rindex("<|endoftext|>") + len("<|endoftext|>\n")]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A user's folder: a trained run, its export, a LoRA adapter, the corpus, and bad files."""
    root = tmp_path_factory.mktemp("sandbox")
    (root / "corpus").mkdir()
    (root / "corpus" / "stories.txt").write_text(_stories(150), encoding="utf-8")
    (root / "notes.txt").write_text("my notes\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "thesis.tex").write_text("\\documentclass{article}\n")
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--run.out_dir", str(root / "run"), "--data.dataset", str(root / "corpus/stories.txt"),
                     "--data.vocab_size", "300", "--model.preset", "debug", "--data.seq_len", "64",
                     "--budget.max_steps", "2", "--run.progress", "false", "--run.threads", "1",
                     "--run.plot", "false"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main(["export", "--checkpoint", str(root / "run"), "--out", str(root / "hf")]) == 0
    assert main(["quantize", "--checkpoint", str(root / "hf"), "--method", "int8", "--out", str(root / "int8")]) == 0
    (root / "other_tokenizer").mkdir()
    assert main(["tokenizer", "train", "--input", str(root / "corpus/stories.txt"), "--vocab-size", "280",
                 "--out", str(root / "other_tokenizer"), "--workers", "1"]) == 0
    _lora_adapter(root / "hf", root / "adapter")
    (root / "bad_tokenizer").mkdir()
    (root / "bad_tokenizer" / "tokenizer.json").write_text('{"model": ')
    lines = [json.dumps({"text": "A fine story."}), '{"text": "scraped \\ud800 text"}']
    (root / "surrogate.jsonl").write_text("\n".join(lines) + "\n")
    (root / "surrogate_sft.jsonl").write_text(json.dumps({"instruction": "Hi", "output": "Hello."}) + "\n"
                                              + '{"instruction": "Say \\udfff", "output": "No."}\n')
    (root / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 50)
    (root / "empty.txt").write_text("")
    (root / "bad.toml").write_text("[optim\nlr = 1\n")
    (root / "no_tab.tsv").write_text("Hi.\t你好。\nHello there\n")
    (root / "empty_side.tsv").write_text("\t你好。\n")
    _seq2seq_model(root / "s2s")
    (root / "wordpiece").mkdir()
    (root / "wordpiece" / "tokenizer.json").write_text(json.dumps(
        {"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0, "a": 1}}}))
    (root / "english.txt").write_text("Once upon a time, a little dog ran to the park.\n" * 20)
    (root / "zh.txt").write_text("我想喝茶。\n你好。\n他是我的朋友。\n" * 20, encoding="utf-8")
    (root / "flipped").mkdir()
    shutil.copytree(root / "hf", root / "flipped", dirs_exist_ok=True)
    weights = bytearray((root / "flipped" / "model.safetensors").read_bytes())
    weights[-3] ^= 0x10
    (root / "flipped" / "model.safetensors").write_bytes(bytes(weights))
    return root


def _lora_adapter(base: Path, out: Path) -> None:
    from minillama.finetune.lora import LoRAConfig, add_lora, save_adapter
    from minillama.model import MiniLlama

    model = MiniLlama.from_pretrained(base)
    config = LoRAConfig(r=2, alpha=4, targets=("q", "v"))
    add_lora(model, config)
    save_adapter(model, config, out)


def _seq2seq_model(out: Path) -> None:
    """An untrained translation model (64 positions) with a joint tokenizer, as `translate train` saves one."""
    from minillama.seq2seq import data
    from minillama.seq2seq.config import config_from_preset
    from minillama.seq2seq.model import MiniSeq2Seq
    from minillama.seq2seq.train import save_translation_model

    tokenizer = data.train_joint_tokenizer(data.tatoeba_pairs()[::50], 300, out.with_name("s2s_tokenizer"))
    model = MiniSeq2Seq(config_from_preset("debug", vocab_size=tokenizer.vocab_size, pad_token_id=1, eos_token_id=0,
                                           decoder_start_token_id=1))
    save_translation_model(model, tokenizer, out, {"direction": "en-zh"})


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` -> its content's sha256 ("dir" for folders). A run.lock counts by
    its existence only: a refused run may have written its PID into it."""
    tree = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            tree[name] = "link:" + str(path.readlink())
        elif path.is_dir():
            tree[name] = "dir"
        elif path.name == DirectoryLock.NAME:
            tree[name] = "lock"
        else:
            tree[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


# (argv, words the error line must contain, the command's own new output that may appear)
CASES = {
    # ---- --out pointing at each kind of existing path --------------------------------------------
    "export over a run directory": (["export", "--checkpoint", "hf", "--out", "run"],
                                    ["run holds files that are not a model directory minillama wrote (checkpoints, "
                                     "data, metrics.jsonl, run.lock, ...)", "--overwrite"], None),
    "export over a plain file": (["export", "--checkpoint", "hf", "--out", "notes.txt"],
                                 ["notes.txt is a file", "--overwrite"], None),
    "export over a foreign folder": (["export", "--checkpoint", "hf", "--out", "foreign"],
                                     ["foreign holds files that are not a model directory", "(thesis.tex)"], None),
    "export over a tokenizer": (["export", "--checkpoint", "hf", "--out", "run/tokenizer"],
                                ["is a minillama tokenizer directory, not a model"], None),
    "export over its own input": (["export", "--checkpoint", "hf", "--out", "hf", "--overwrite"],
                                  ["an input of this command"], None),
    "export over the current directory": (["export", "--checkpoint", "hf", "--out", ".", "--overwrite"],
                                          ["current directory"], None),
    "export over a parent directory": (["export", "--checkpoint", "hf", "--out", "..", "--overwrite"],
                                       ["current directory"], None),
    "import over a run directory": (["import", "--hf", "hf", "--out", "run"],
                                    ["run holds files that are not a", "--overwrite"], None),
    "import over its own input": (["import", "--hf", "hf", "--out", "hf", "--overwrite"],
                                  ["an input of this command"], None),
    "tokenizer over the corpus folder": (["tokenizer", "train", "--input", "corpus/stories.txt", "--out",
                                          "corpus", "--overwrite"], ["corpus holds corpus/stories.txt, an input"],
                                         None),
    "tokenizer over a plain file": (["tokenizer", "train", "--input", "corpus/stories.txt", "--out", "notes.txt"],
                                    ["notes.txt is a file", "--overwrite"], None),
    "tokenizer over a run directory": (["tokenizer", "train", "--input", "corpus/stories.txt", "--out", "run"],
                                       ["run holds files that are not a"], None),
    "tokenizer over a model": (["tokenizer", "train", "--input", "corpus/stories.txt", "--out", "hf"],
                               ["hf is a minillama model directory, not a tokenizer"], None),
    "merge-lora over a run directory": (["merge-lora", "--base", "hf", "--adapter", "adapter", "--out", "run"],
                                        ["run holds files that are not a", "--overwrite"], None),
    "merge-lora over its adapter": (["merge-lora", "--base", "hf", "--adapter", "adapter", "--out", "adapter",
                                     "--overwrite"], ["an input of this command"], None),
    "prepare into the corpus folder": (["prepare", "--tokenizer", "run/tokenizer", "--dataset", "corpus/stories.txt",
                                        "--out", "corpus", "--force"], ["an input of this command"], None),
    "prepare into a foreign folder": (["prepare", "--tokenizer", "run/tokenizer", "--dataset", "corpus/stories.txt",
                                       "--out", "foreign"], ["foreign holds files that are not a data directory",
                                                             "--force"], None),
    "prepare over a plain file": (["prepare", "--tokenizer", "run/tokenizer", "--dataset", "corpus/stories.txt",
                                   "--out", "notes.txt"], ["notes.txt is a file"], None),
    # ---- one run per directory, never two runs mixed ----------------------------------------------
    "train fresh into a used run": (["train", "--run.out_dir", "run", "--run.resume", "never"],
                                    ["already holds a run", "--run.out_dir NEW_DIR"], None),
    "train into a foreign folder": (["train", "--run.out_dir", "foreign", "--model.preset", "debug",
                                     "--data.seq_len", "64"],
                                    ["holds no minillama run"], None),
    "train into a plain file": (["train", "--run.out_dir", "notes.txt"], ["is a file"], None),
    "resume with another shape": (["train", "--run.out_dir", "run", "--model.preset", "debug",
                                   "--model.num_hidden_layers", "3", "--data.seq_len", "64"],
                                  ["num_hidden_layers=2", "num_hidden_layers=3", "--run.out_dir NEW_DIR"], None),
    "resume keyword misspelt": (["train", "--run.out_dir", "run", "--run.resume", "lastest"],
                                ["'lastest' is neither auto, never"], None),
    "resume from a missing path": (["train", "--run.out_dir", "run", "--run.resume", "run/checkpoints/step-000900"],
                                   ["step-000900' is neither auto, never", "no such path"], None),
    "resume another run here": (["train", "--run.out_dir", "run", "--run.resume", "hf"],
                                ["would mix two runs"], None),
    "unknown preset, before any work": (["train", "--run.out_dir", "new", "--model.preset", "huge"],
                                        ["model.preset must be one of", "got 'huge'"], None),
    "unknown ZeRO stage": (["train", "--run.out_dir", "new", "--run.parallel", "zero4"],
                           ["run.parallel must be one of ddp, zero1, zero2, zero3, fsdp", "got 'zero4'"], None),
    "muon under ZeRO-3": (["train", "--run.out_dir", "new", "--run.parallel", "fsdp", "--optim.optimizer", "muon"],
                          ["muon needs whole matrices, which run.parallel zero3 shards", "ddp or zero1"], None),
    "misspelt model field": (["train", "--model.hidden_sise", "8"], ["unknown model setting 'hidden_sise'"], None),
    "windows longer than the model": (["train", "--run.out_dir", "new", "--model.preset", "debug",
                                       "--data.tokenizer", "run/tokenizer", "--data.prepared", "run/data",
                                       "--data.seq_len", "4096"],
                                      ["data.seq_len 4096 is longer than the model's context"], None),
    "vocabulary smaller than the tokenizer": (["train", "--run.out_dir", "new", "--model.preset", "debug",
                                               "--data.tokenizer", "run/tokenizer", "--data.prepared", "run/data",
                                               "--model.vocab_size", "100", "--data.seq_len", "64"],
                                              ["model.vocab_size 100 is smaller than the tokenizer's"], "new"),
    "prepared data of another tokenizer": (["train", "--run.out_dir", "new", "--model.preset", "debug",
                                            "--data.tokenizer", "other_tokenizer", "--data.prepared", "run/data",
                                            "--data.seq_len", "64"],
                                           ["made with another tokenizer"], "new"),
    "train on a file that is no dataset": (["train", "--run.out_dir", "new", "--data.dataset", "bad.toml"],
                                           ["bad.toml: unknown format"], None),
    "a broken config file": (["train", "--config", "bad.toml"], ["bad.toml is not valid TOML"], None),
    # ---- text that is not text ----------------------------------------------------------------------
    "train on a lone surrogate": (["train", "--run.out_dir", "new", "--model.preset", "debug",
                                   "--data.tokenizer", "run/tokenizer", "--data.dataset", "surrogate.jsonl",
                                   "--data.seq_len", "64"],
                                  ["surrogate.jsonl:2", "lone surrogate", "--data.utf8_errors replace"], "new"),
    "prepare a lone surrogate": (["prepare", "--tokenizer", "run/tokenizer", "--dataset", "surrogate.jsonl",
                                  "--out", "new"], ["surrogate.jsonl:2", "--utf8-errors replace"], "new"),
    "sft on a lone surrogate": (["sft", "--base", "hf", "--data", "surrogate_sft.jsonl", "--run.out_dir", "new"],
                                ["surrogate_sft.jsonl:2", "--data.utf8_errors replace"], "new"),
    "prepare latin-1 text": (["prepare", "--tokenizer", "run/tokenizer", "--dataset", "latin1.txt", "--out", "new"],
                             ["latin1.txt is not UTF-8", "--utf8-errors replace"], "new"),
    "tokenizer on latin-1 text": (["tokenizer", "train", "--input", "latin1.txt", "--out", "new"],
                                  ["not valid UTF-8", "--utf8-errors replace"], None),
    "prepare an empty file": (["prepare", "--tokenizer", "run/tokenizer", "--dataset", "empty.txt", "--out", "new"],
                              ["has no documents"], "new"),
    "prepare with a corrupt tokenizer": (["prepare", "--tokenizer", "bad_tokenizer", "--dataset",
                                          "corpus/stories.txt", "--out", "new"],
                                         ["bad_tokenizer/tokenizer.json is not a valid tokenizer file"], None),
    "encode with a corrupt tokenizer": (["tokenizer", "encode", "-t", "bad_tokenizer", "hello"],
                                        ["bad_tokenizer/tokenizer.json is not valid JSON"], None),
    # ---- models, devices, numbers --------------------------------------------------------------------
    "eval beyond the context": (["eval", "--checkpoint", "hf", "--dataset", "corpus/stories.txt", "--seq-len",
                                 "69784"], ["longer than the model's context", "--context-lengths", "--seq-len 128"],
                                None),
    "eval context lengths 0,abc": (["eval", "--checkpoint", "run", "--context-lengths", "0,abc"],
                                   ["--context-lengths: must be a positive integer, got 0 (in '0,abc')"], None),
    "eval context lengths abc": (["eval", "--checkpoint", "run", "--context-lengths", "256,abc"],
                                 ["--context-lengths: must be an integer, got 'abc'"], None),
    "eval an unknown RoPE scaling": (["eval", "--checkpoint", "run", "--context-lengths", "256", "--rope-scaling",
                                      "none,ntk"], ["--rope-scaling: unknown RoPE scaling 'ntk'", "yarn:16"], None),
    "eval a RoPE factor below 1": (["eval", "--checkpoint", "run", "--context-lengths", "256", "--rope-scaling",
                                    "yarn:0.5"], ["the factor in 'yarn:0.5' must be a number >= 1"], None),
    "eval a scaling without lengths": (["eval", "--checkpoint", "run", "--rope-scaling", "yarn"],
                                       ["--rope-scaling goes with --context-lengths"], None),
    "eval two window lengths": (["eval", "--checkpoint", "run", "--seq-len", "64", "--context-lengths", "256"],
                                ["--seq-len and --context-lengths both set the window length"], None),
    "eval context lengths of a model outside a run": (["eval", "--checkpoint", "hf", "--context-lengths", "256"],
                                                      ["hf is not in a training run directory", "--out DIR"], None),
    "eval context lengths into a foreign folder": (["eval", "--checkpoint", "run", "--context-lengths", "256",
                                                    "--out", "foreign"],
                                                   ["foreign holds files that are not a length-extrapolation",
                                                    "--overwrite"], None),
    "eval context lengths over its checkpoint": (["eval", "--checkpoint", "hf", "--context-lengths", "256",
                                                  "--out", "hf", "--overwrite"], ["an input of this command"], None),
    "eval context lengths beyond the text": (["eval", "--checkpoint", "run", "--dataset", "corpus/stories.txt",
                                              "--context-lengths", "64,1000000"],
                                             ["too few for one window of 1000000", "shorter context lengths"], None),
    "eval with another tokenizer": (["eval", "--checkpoint", "hf", "--dataset", "corpus/stories.txt",
                                     "--tokenizer", "other_tokenizer"], ["differs from the one saved"], None),
    "eval with batch size 0": (["eval", "--checkpoint", "hf", "--batch-size", "0"],
                               ["--batch-size: must be a positive integer"], None),
    "eval on a missing GPU": (["eval", "--checkpoint", "hf", "--device", "cuda"],
                              ["device cuda is not available", "--device cpu"], None),
    "sample on a missing GPU": (["sample", "--checkpoint", "hf", "--device", "cuda"],
                                ["device cuda is not available", "--device cpu"], None),
    "serve on a missing GPU": (["serve", "--checkpoint", "hf", "--device", "cuda"],
                               ["device cuda is not available", "--device cpu"], None),
    "train on a missing GPU": (["train", "--run.out_dir", "new", "--run.device", "cuda"],
                               ["device cuda is not available", "--run.device cpu"], None),
    "serve on port -1": (["serve", "--checkpoint", "hf", "--port", "-1"], ["--port: must be a port number"], None),
    "serve on port 70000": (["serve", "--checkpoint", "hf", "--port", "70000"], ["from 1 to 65535"], None),
    "serve a context of 0": (["serve", "--checkpoint", "hf", "--context", "0"],
                             ["--context: must be a positive integer"], None),
    "model info with a stray path": (["model", "info", "/nope"],
                                     ["unrecognized arguments: /nope", "minillama model info --help"], None),
    "sample a flipped bit": (["sample", "--checkpoint", "flipped", "--prompt", "Once"],
                             ["checksum mismatch", "model.safetensors"], None),
    "sample a folder that is no model": (["sample", "--checkpoint", "foreign"], ["is not a model directory"], None),
    "classify eval of a causal model": (["classify", "eval", "--checkpoint", "hf"],
                                        ["is not a sequence classifier"], None),
    # ---- BERT -----------------------------------------------------------------------------------------
    "bert fill-mask without [MASK]": (["bert", "fill-mask", "--checkpoint", "hf", "--text", "Lily went home."],
                                      ["--text has no [MASK] to fill", "Lily went to the [MASK]."], None),
    "bert fill-mask of a causal model": (["bert", "fill-mask", "--checkpoint", "hf", "--text", "A [MASK]."],
                                         ["is not a BERT model", "minillama bert pretrain"], None),
    "bert eval of a causal model": (["bert", "eval", "--checkpoint", "run"], ["is not a BERT model"], None),
    "bert pretrain masking every token": (["bert", "pretrain", "--mlm-probability", "1", "--run.out_dir", "new"],
                                          ["--mlm-probability must be between 0 and 1", "got 1.0"], None),
    "bert pretrain from a causal model": (["bert", "pretrain", "--run.init_from", "hf", "--run.out_dir", "new"],
                                          ["is not a BERT model", "minillama bert pretrain"], None),
    # ---- translation ----------------------------------------------------------------------------------
    "translate train on a line without a tab": (["translate", "train", "--data", "no_tab.tsv", "--run.out_dir", "new"],
                                                ["no_tab.tsv:2: expected 'source<TAB>target', found no tab"], None),
    "translate train on an empty side": (["translate", "train", "--data", "empty_side.tsv", "--run.out_dir", "new"],
                                         ["empty_side.tsv:1: the first sentence is empty"], None),
    "translate train in another direction": (["translate", "train", "--direction", "en-fr"],
                                             ["--direction: must be one of en-zh, zh-en, got 'en-fr'"], None),
    "translate eval in another direction": (["translate", "eval", "--checkpoint", "s2s", "--direction", "fr-en"],
                                            ["--direction: must be one of en-zh, zh-en"], None),
    "translate with a decoder-only model": (["translate", "--checkpoint", "hf", "--text", "Hi."],
                                            ["holds a llama model, not a seq2seq"], None),
    "translate eval of a decoder-only run": (["translate", "eval", "--checkpoint", "run"],
                                             ["holds a llama model, not a seq2seq"], None),
    "translate a sentence beyond the positions": (["translate", "--checkpoint", "s2s", "--text", "word " * 80],
                                                  ["more than the model's 64 positions", "--truncate"], None),
    # ---- GGUF export ---------------------------------------------------------------------------------
    "export gguf in a dtype llama.cpp's GGUF export does not offer": (
        ["export", "--format", "gguf", "--checkpoint", "hf", "--dtype", "q4_1", "--out", "m.gguf"],
        ["argument --dtype: invalid choice: 'q4_1'"], None),
    "export gguf of a quantized model": (
        ["export", "--format", "gguf", "--checkpoint", "int8", "--out", "m.gguf"],
        ["int8 is a quantized minillama model", "export the float checkpoint", "--dtype q8_0 or q4_0"], None),
    "export gguf over a plain file": (["export", "--format", "gguf", "--checkpoint", "hf", "--out", "notes.txt"],
                                      ["notes.txt exists and is not a GGUF file", "--overwrite"], None),
    "export gguf over a folder": (["export", "--format", "gguf", "--checkpoint", "hf", "--out", "foreign"],
                                  ["foreign is a directory", "--out names the .gguf file"], None),
    "export gguf into its input": (["export", "--format", "gguf", "--checkpoint", "hf", "--out", "hf/m.gguf"],
                                   ["is inside", "an input of this command"], None),
    "export a transformers directory in a GGUF dtype": (["export", "--checkpoint", "hf", "--dtype", "q4_0",
                                                         "--out", "new_export"],
                                                        ["--dtype q4_0 is a GGUF type", "--format gguf"], None),
    "export gguf in a transformers dtype": (["export", "--format", "gguf", "--checkpoint", "hf", "--dtype",
                                             "bfloat16", "--out", "m.gguf"],
                                            ["--dtype bfloat16 is not a GGUF type", "f32, f16, q8_0, q4_0"], None),
    "translate without a model": (["translate", "--text", "Hi."], ["--checkpoint is required"], None),
    # ---- vocabulary extension -----------------------------------------------------------------------
    "tokenizer extend with a corpus that yields no new token": (
        ["tokenizer", "extend", "-t", "run/tokenizer", "--input", "english.txt", "--add", "50", "--out", "ext"],
        ["english.txt yields no token the tokenizer lacks"], None),
    "tokenizer extend adding 0 tokens": (
        ["tokenizer", "extend", "-t", "run/tokenizer", "--input", "zh.txt", "--add", "0", "--out", "ext"],
        ["--add must be at least 1"], None),
    "tokenizer extend of a WordPiece tokenizer": (
        ["tokenizer", "extend", "-t", "wordpiece", "--input", "zh.txt", "--add", "10", "--out", "ext"],
        ["is not a byte-level BPE tokenizer", "only BPE"], None),
    "tokenizer extend over a foreign folder": (
        ["tokenizer", "extend", "-t", "run/tokenizer", "--input", "zh.txt", "--add", "10", "--out", "foreign"],
        ["foreign holds files that are not a tokenizer directory"], None),
    "model resize-vocab to a tokenizer that does not extend the model's": (
        ["model", "resize-vocab", "--checkpoint", "run", "--tokenizer", "other_tokenizer", "--out", "resized"],
        ["does not extend the model's tokenizer"], None),
    "model resize-vocab to a tokenizer with other ids": (
        ["model", "resize-vocab", "--checkpoint", "run", "--tokenizer", "s2s_tokenizer", "--out", "resized"],
        ["does not extend the model's tokenizer"], None),
    "quantize with an unknown method": (
        ["quantize", "--checkpoint", "hf", "--method", "int3", "--out", "q"],
        ["unknown quantization method 'int3'", "int8, int4, gptq-int4"], None),
    "quantize with a group size that does not divide the input features": (
        ["quantize", "--checkpoint", "hf", "--method", "int4", "--group-size", "32", "--out", "q"],
        ["group size 32 does not divide the 176 input features of model.layers.0.mlp.down_proj"], None),
    "quantize an already quantized model": (
        ["quantize", "--checkpoint", "int8", "--method", "int4", "--out", "q"],
        ["the model is already quantized"], None),
    "export a quantized model": (["export", "--checkpoint", "int8", "--out", "e"], ["the model is quantized"], None),
    "sample a quantized model with the NumPy engine": (
        ["sample", "--checkpoint", "int8", "--engine", "numpy", "--prompt", "Once", "--max-new-tokens", "2"],
        ["is a quantized model", "--engine torch"], None),
    "train from a quantized model": (["train", "--run.init_from", "int8", "--run.out_dir", "r", "--data.seq_len", "64"],
                                     ["is a quantized model", "--run.qat int4"], "r"),
    "quantize over a run directory": (
        ["quantize", "--checkpoint", "hf", "--method", "int8", "--out", "run"],
        ["run holds files that are not a model directory", "--overwrite"], None),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, sandbox, monkeypatch, capsys):
    argv, words, output = CASES[case]
    monkeypatch.chdir(sandbox)
    before = snapshot(sandbox)
    try:
        code = main(argv)
        after = snapshot(sandbox)
    finally:  # the command's own new output may exist: gone before the next case
        if output is not None:
            shutil.rmtree(sandbox / output, ignore_errors=True)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    if output is not None:
        after = {k: v for k, v in after.items() if k != output and not k.startswith(output + "/")}
    assert after == before


def test_a_second_training_in_the_same_run_is_refused_naming_the_holder(sandbox, monkeypatch, capsys):
    monkeypatch.chdir(sandbox)
    before = snapshot(sandbox)
    with DirectoryLock(sandbox / "run"):  # another process holds the run (a second descriptor is refused too)
        assert main(["train", "--run.out_dir", "run", "--model.preset", "debug", "--data.seq_len", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use by another minillama process (PID" in err
    assert snapshot(sandbox) == before


def test_junk_in_the_latest_pointer_falls_back_to_the_newest_checkpoint(sandbox, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(sandbox / "run", run)
    (run / "checkpoints" / "latest").write_bytes(b"\x00\xff\xfe../../etc\n")
    assert main(["sample", "--checkpoint", str(run), "--prompt", "Once", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    assert main(["train", "--run.out_dir", str(run), "--model.preset", "debug", "--data.seq_len", "64",
                 "--budget.max_steps", "3", "--run.progress", "false", "--run.plot", "false"]) == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000003"


def test_given_token_files_are_trained_on_as_they_are(small_corpus, tmp_path, capsys):
    """`--data.prepared DIR` without `--data.dataset`: the user's token files, not the default
    dataset re-encoded over them."""
    tokenizer, prepared, _ = small_corpus
    before = snapshot(prepared)
    args = ["train", "--run.out_dir", str(tmp_path / "run"), "--data.prepared", str(prepared), "--model.preset",
            "debug", "--data.seq_len", "32", "--budget.max_steps", "2", "--run.progress", "false",
            "--run.plot", "false"]
    assert main(args) == 0  # the tokenizer is the one their meta.json names
    assert snapshot(prepared) == before
    state = json.loads((tmp_path / "run/checkpoints/step-000002/trainer_state.json").read_text())
    assert state["data"]["num_tokens"] == json.loads((prepared / "meta.json").read_text())["train_tokens"]
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "tokenizer").exists()


def test_classification_labels_that_are_no_class_ids_are_one_line(small_corpus, tmp_path, capsys):
    """A label file with a class id the classifier does not have, or a word for a label."""
    from minillama.bert import BertConfig, BertForSequenceClassification
    from minillama.bert.io import save_bert
    from minillama.bert.tokenizer import train_bert_tokenizer

    tokenizer = train_bert_tokenizer(small_corpus[2], 300)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    save_bert(BertForSequenceClassification(config, ["negative", "positive"]), tmp_path / "clf", tokenizer)
    (tmp_path / "ids.tsv").write_text("label\tsentence\n1\ta fine film\n7\tdull\n")
    (tmp_path / "words.tsv").write_text("label\tsentence\npositive\ta fine film\n")
    for data, words in (("ids.tsv", ["ids.tsv:3", "class id 7 is not one of the classifier's 2 classes"]),
                        ("words.tsv", ["words.tsv:2", "expected '<class id>\\t<sentence>'"])):
        code = main(["classify", "eval", "--checkpoint", str(tmp_path / "clf"), "--data", str(tmp_path / data)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        assert all(word in lines[0] for word in words), lines[0]


def test_classify_training_sets_that_are_not_labelled_sentiment_are_one_line(tmp_path, capsys):
    """classify train --data.dataset: an unknown name, or a file whose class ids SST-2's two classes
    do not have, is refused before a run directory is made."""
    (tmp_path / "ids.tsv").write_text("label\tsentence\n1\ta fine film\n2\tso-so\n")
    for dataset, words in (("sst5", ["'sst5'", "sst2-glue", "label<TAB>sentence"]),
                           (str(tmp_path / "ids.tsv"), ["ids.tsv:3", "class id 2 is not one of"])):
        code = main(["classify", "train", "--data.dataset", dataset, "--run.out_dir", str(tmp_path / "run")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        assert all(word in lines[0] for word in words), lines[0]
        assert not (tmp_path / "run").exists()
