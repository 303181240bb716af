"""Sequence classification: transformers' LlamaForSequenceClassification / Qwen2 give our logits and
loss on the exported directory (and we load theirs), the last-token rule, and SST-2 training."""

import json

import pytest
import torch

from minillama.export import save_hf as save_hf_classifier
from minillama.model import MiniLlama, MiniLlamaForSequenceClassification, ModelConfig
from minillama.model.classification import last_non_pad_index

transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32, initializer_range=0.2, pad_token_id=0)
LABELS = ["negative", "positive", "neutral"]


pytestmark = pytest.mark.usefixtures("keep_thread_count")  # the runs below use one thread


def padded_batch(side="right"):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (4, 12), generator=generator)
    mask = torch.ones_like(ids)
    for row, length in enumerate((12, 7, 3, 10)):
        pads = slice(length, None) if side == "right" else slice(0, 12 - length)
        ids[row, pads], mask[row, pads] = 0, 0
    return ids, mask


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def exported(request, tmp_path_factory):
    overrides = {"attention_bias": True, "tie_word_embeddings": False} if request.param == "qwen2" else {}
    torch.manual_seed(0)
    model = MiniLlamaForSequenceClassification(ModelConfig(**SHAPE, **overrides), LABELS).eval()
    out = save_hf_classifier(model, tmp_path_factory.mktemp(request.param) / "classifier")
    auto = transformers.AutoModelForSequenceClassification
    reference = auto.from_pretrained(out, dtype=torch.float32).eval()
    return model, reference, out, request.param


def test_transformers_loads_our_classifier_with_equal_logits_and_loss(exported):
    model, reference, out, kind = exported
    assert type(reference).__name__ == ("Qwen2" if kind == "qwen2" else "Llama") + "ForSequenceClassification"
    assert reference.config.id2label == dict(enumerate(LABELS)) and reference.config.num_labels == 3
    ids, mask = padded_batch()
    labels = torch.tensor([0, 2, 1, 1])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, labels=labels)
        theirs = reference(input_ids=ids, attention_mask=mask, labels=labels)
        without_mask = reference(input_ids=ids).logits
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-5, atol=1e-5)
    # Right padding: the last real token never sees the pads after it, so the mask changes nothing.
    torch.testing.assert_close(model(ids).logits, without_mask, rtol=1e-5, atol=1e-5)


def test_left_padding_reads_the_same_token_as_transformers(exported):
    model, reference, _, _ = exported
    ids, mask = padded_batch("left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # transformers counts positions from the first column
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, theirs, rtol=1e-5, atol=1e-5)


def test_we_load_a_classifier_that_transformers_wrote(exported, tmp_path):
    _, reference, _, _ = exported
    with torch.no_grad():
        reference.score.weight.normal_(0, 0.5)
    reference.save_pretrained(tmp_path / "theirs")
    loaded = MiniLlamaForSequenceClassification.from_pretrained(tmp_path / "theirs").eval()
    assert loaded.labels == LABELS
    ids, mask = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits,
                                   reference(input_ids=ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-5)


def test_the_last_non_pad_token_rule():
    ids = torch.tensor([[5, 6, 0, 0], [0, 0, 7, 8], [9, 9, 9, 9], [0, 0, 0, 0], [4, 0, 3, 0]])
    assert last_non_pad_index(ids, 0).tolist() == [1, 3, 3, 0, 2]
    assert last_non_pad_index(ids[:1], None).tolist() == [3]
    with pytest.raises(ValueError, match="pad_token_id"):
        last_non_pad_index(ids, None)


def test_a_pretrained_backbone_is_reused_unchanged():
    torch.manual_seed(0)
    base = MiniLlama(ModelConfig(**SHAPE))
    classifier = MiniLlamaForSequenceClassification(base.config, LABELS[:2], backbone=base.model)
    backbone_keys = {k for k in base.state_dict() if k != "lm_head.weight"}
    assert set(classifier.state_dict()) == backbone_keys | {"score.weight"}
    ids = torch.randint(1, 97, (1, 9))
    with torch.no_grad():
        hidden = base.model(ids, torch.arange(9)[None], None, None)[0, -1]
        torch.testing.assert_close(classifier(ids).logits[0], classifier.score(hidden))


def test_classify_cli_trains_and_evaluates_on_sst2(small_corpus, tmp_path, capsys):
    from minillama.cli import main

    out = tmp_path / "run"
    assert main(["classify", "train", "--data.tokenizer", str(small_corpus[0]), "--model.hidden_size", "64",
                 "--model.num_hidden_layers", "1", "--budget.max_steps", "120", "--data.batch_size", "32",
                 "--optim.lr", "3e-3", "--run.precision", "float32", "--run.progress", "false",
                 "--run.out_dir", str(out), "--run.eval_interval", "120", "--run.eval_batches", "4",
                 "--run.plot", "false", "--run.threads", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["examples"] == 1821 and report["dev"]["examples"] == 872
    assert report["dev"]["accuracy"] > 0.6 and report["test"]["accuracy"] > 0.6, report
    capsys.readouterr()
    assert main(["classify", "eval", "--checkpoint", str(out / "model"), "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["test"]["accuracy"]
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert reference.config.id2label == {0: "negative", 1: "positive"}


def test_glue_training_set_holds_the_sentences_and_none_of_the_test_set(tmp_path):
    """sst2-glue is GLUE's SST-2 training set: 67,349 labelled phrases, among them (nearly) every SST-2
    training sentence with its label, and (one accidental match aside) no test sentence."""
    from minillama.finetune.classify import sst2_split, training_pairs

    glue = training_pairs("sst2-glue")
    assert len(glue) == 67_349 and {label for label, _ in glue} == {0, 1}
    labels = {" ".join(text.split()): label for label, text in glue}
    sentences = [(label, " ".join(text.split())) for label, text in training_pairs("sst2")]
    found = [(label, text) for label, text in sentences if text in labels]
    assert len(found) > 0.9 * len(sentences)
    assert sum(labels[text] == label for label, text in found) > 0.99 * len(found)
    assert sum(" ".join(text.split()) in labels for _, text in sst2_split("test")) <= 1
    (tmp_path / "mine.tsv").write_text("label\tsentence\n1\ta fine film\n0\tdull\n")
    assert training_pairs(str(tmp_path / "mine.tsv")) == [(1, "a fine film"), (0, "dull")]
