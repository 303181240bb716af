"""`minillama classify` with a BERT base: the pretrained encoder with a new pooler and classifier,
`--from-scratch` the same shape freshly initialised; the result is a transformers
BertForSequenceClassification directory; bad input is one line."""

import json

import pytest
import torch

from minillama.bert import BertConfig, BertForMaskedLM
from minillama.bert.io import save_bert
from minillama.bert.tokenizer import load_bert_tokenizer, train_bert_tokenizer
from minillama.cli import main
from minillama.finetune.classify import ClassifySettings, build_classifier
from minillama.train.config import TrainConfig

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("keep_thread_count")


@pytest.fixture(scope="module")
def bert_base(small_corpus, tmp_path_factory):
    """A (random) BERT masked LM with its BERT tokenizer, as `bert pretrain` leaves one."""
    root = tmp_path_factory.mktemp("bert_base")
    train_bert_tokenizer(small_corpus[2], 400, root / "tokenizer")
    tokenizer = load_bert_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    save_bert(BertForMaskedLM(config), root / "mlm", tokenizer)
    return root / "mlm"


def test_the_classifier_starts_from_the_pretrained_encoder(bert_base):
    base = BertForMaskedLM.from_pretrained(bert_base)
    model, tokenizer = build_classifier(TrainConfig(), ClassifySettings(str(bert_base)), bert_base, ["n", "p"])
    assert type(model).__name__ == "BertForSequenceClassification"
    theirs = base.bert.state_dict()
    ours = model.bert.state_dict()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert set(ours) - set(theirs) == {"pooler.dense.weight", "pooler.dense.bias"}
    fresh, _ = build_classifier(TrainConfig(), ClassifySettings(str(bert_base), from_scratch=True), bert_base,
                                ["n", "p"])
    assert fresh.config == model.config
    assert not torch.equal(fresh.bert.embeddings.word_embeddings.weight, base.bert.embeddings.word_embeddings.weight)
    ids = tokenizer.encode_for_model("a fine film")[0]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


@pytest.mark.parametrize("scratch", [False, True])
def test_classify_cli_fine_tunes_a_bert(bert_base, tmp_path, capsys, scratch):
    out = tmp_path / "run"
    assert main(["classify", "train", "--base", str(bert_base), "--budget.max_steps", "20", "--data.batch_size", "16",
                 "--optim.lr", "1e-3", "--run.progress", "false", "--run.out_dir", str(out), "--run.eval_interval",
                 "20", "--run.eval_batches", "2", "--run.plot", "false", "--run.threads", "1",
                 *(["--from-scratch"] if scratch else [])]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["examples"] == 1821 and report["dev"]["examples"] == 872
    capsys.readouterr()
    assert main(["classify", "eval", "--checkpoint", str(out / "model"), "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["test"]["accuracy"]
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    assert type(reference).__name__ == "BertForSequenceClassification"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out / "model")
    batch = hf_tokenizer(["a fine , warm film", "dull"], padding=True, return_tensors="pt")
    ours = load_bert_dir_eval(out / "model")
    with torch.no_grad():
        torch.testing.assert_close(ours(batch["input_ids"], batch["attention_mask"]).logits,
                                   reference(**batch).logits, atol=1e-5, rtol=1e-5)


def load_bert_dir_eval(path):
    from minillama.bert.model import load_bert_dir

    return load_bert_dir(path).eval()


def test_from_scratch_needs_a_base(tmp_path, capsys):
    assert main(["classify", "train", "--from-scratch", "--run.out_dir", str(tmp_path / "x")]) == 2
    assert "--from-scratch takes the shape" in capsys.readouterr().err


def test_classify_eval_of_a_masked_lm_is_refused(bert_base, capsys):
    assert main(["classify", "eval", "--checkpoint", str(bert_base)]) == 2
    assert "is a BERT masked LM, not a sequence classifier" in capsys.readouterr().err
