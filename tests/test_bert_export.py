"""BERT directories: transformers' Auto classes load our exports with no extra code (same logits,
the tokenizer's [CLS] ... [SEP] and token type ids, the same fill-mask answers), transformers' own
BERT directories load here, the round trip is bitwise, and checksums are verified."""

import json

import pytest
import torch

from minillama.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from minillama.bert.fill_mask import fill_mask
from minillama.bert.io import save_bert
from minillama.bert.model import load_bert_dir
from minillama.bert.tokenizer import BertTokenizer, load_bert_tokenizer, train_bert_tokenizer
from minillama.errors import CheckpointError, MiniLlamaError

transformers = pytest.importorskip("transformers")

SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
             max_position_embeddings=64, initializer_range=0.2)


@pytest.fixture(scope="module")
def bert_tokenizer(small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bert_tok") / "tokenizer"
    train_bert_tokenizer(small_corpus[2], 400, out)
    return out


def random_bert(tokenizer: BertTokenizer, cls=BertForMaskedLM, seed=0, **extra):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id, **SHAPE)
    model = cls(config, **extra)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def test_tokenizer_specials_and_ids(bert_tokenizer):
    tokenizer = load_bert_tokenizer(bert_tokenizer)
    assert [tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id is None
    ids, types = tokenizer.encode_for_model("Lily went home.", "She was happy.")
    assert ids[0] == 2 and ids.count(3) == 2 and ids[-1] == 3
    assert types == [0] * (ids.index(3) + 1) + [1] * (len(ids) - ids.index(3) - 1)


def test_auto_tokenizer_adds_cls_sep_and_token_types(bert_tokenizer):
    ours = load_bert_tokenizer(bert_tokenizer)
    theirs = transformers.AutoTokenizer.from_pretrained(bert_tokenizer)
    for text, pair in [("Lily went home.", None), ("Tom saw a big dog.", "The dog ran away!"),
                       ("Lily went to the [MASK].", None), ("A [MASK]  [MASK] day", "b")]:
        got = theirs(text, pair) if pair else theirs(text)
        ids, types = ours.encode_for_model(text, pair)
        assert got["input_ids"] == ids, text
        assert got["token_type_ids"] == types, text
    assert theirs.mask_token == "[MASK]" and theirs.pad_token_id == 0
    assert theirs.decode(theirs("Tom saw a dog.")["input_ids"], skip_special_tokens=True) == "Tom saw a dog."
    batch = theirs(["Lily went home.", "Tom ran to the big red house."], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1] == 0 and batch["attention_mask"][0, -1] == 0


def test_masked_lm_export_loads_in_transformers(bert_tokenizer, tmp_path):
    tokenizer = load_bert_tokenizer(bert_tokenizer)
    model = random_bert(tokenizer)
    save_bert(model, tmp_path / "mlm", tokenizer)
    reference = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm", dtype=torch.float32).eval()
    assert type(reference).__name__ == "BertForMaskedLM"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "mlm")
    batch = hf_tokenizer(["Lily went to the [MASK].", "Tom and his mom baked a cake in the kitchen.", "Hi"],
                         ["It was fun.", "Yes", "Bye now, see you"], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = reference(**batch).logits
        ours = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=1e-5)


def test_classifier_export_loads_in_transformers(bert_tokenizer, tmp_path):
    tokenizer = load_bert_tokenizer(bert_tokenizer)
    model = random_bert(tokenizer, BertForSequenceClassification, labels=["negative", "positive"])
    save_bert(model, tmp_path / "clf", tokenizer)
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf",
                                                                                dtype=torch.float32).eval()
    assert reference.config.id2label == {0: "negative", 1: "positive"}
    batch = transformers.AutoTokenizer.from_pretrained(tmp_path / "clf")(
        ["a fine film", "dull , lifeless and far too long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = reference(**batch).logits
        ours = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert load_bert_dir(tmp_path / "clf").labels == ["negative", "positive"]


@pytest.mark.parametrize("cls", [BertForMaskedLM, BertForSequenceClassification])
def test_round_trip_is_bitwise(bert_tokenizer, tmp_path, cls):
    tokenizer = load_bert_tokenizer(bert_tokenizer)
    extra = {"labels": ["n", "p"]} if cls is BertForSequenceClassification else {}
    model = random_bert(tokenizer, cls, **extra)
    save_bert(model, tmp_path / "a", tokenizer)
    loaded = load_bert_dir(tmp_path / "a")
    assert type(loaded) is cls
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    if cls is BertForMaskedLM:
        assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    save_bert(loaded, tmp_path / "b", tokenizer)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_imports_a_transformers_bert_directory(tmp_path):
    """transformers' own save_pretrained output (its tied-weight and buffer conventions) loads here."""
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=48, max_position_embeddings=40)
    torch.manual_seed(0)
    reference = transformers.BertForMaskedLM(config).eval()
    reference.save_pretrained(tmp_path / "hf")
    model = load_bert_dir(tmp_path / "hf")
    ids = torch.randint(0, 120, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)
    theirs = {k: v for k, v in reference.state_dict().items() if not k.endswith("position_ids")}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in theirs.items())


def test_checksums_are_verified(bert_tokenizer, tmp_path):
    tokenizer = load_bert_tokenizer(bert_tokenizer)
    save_bert(random_bert(tokenizer), tmp_path / "m", tokenizer)
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_bert_dir(tmp_path / "m")


def test_wrong_family_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="not a BERT"):
        load_bert_dir(tmp_path)


def test_fill_mask_matches_the_transformers_pipeline(bert_tokenizer, tmp_path):
    tokenizer = load_bert_tokenizer(bert_tokenizer)
    model = random_bert(tokenizer, seed=3)
    save_bert(model, tmp_path / "mlm", tokenizer)
    pipe = transformers.pipeline("fill-mask", model=str(tmp_path / "mlm"), device="cpu", top_k=5)
    for text in ["Lily went to the [MASK].", "Once upon a time, there was a [MASK] girl."]:
        ours = fill_mask(model, tokenizer, text, top_k=5)[0]
        theirs = pipe(text)
        assert [r["token"] for r in ours] == [r["token"] for r in theirs]
        assert [r["token_str"] for r in ours] == [r["token_str"] for r in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_fill_mask_needs_a_mask(bert_tokenizer):
    tokenizer = load_bert_tokenizer(bert_tokenizer)
    with pytest.raises(MiniLlamaError, match=r"no \[MASK\]"):
        fill_mask(random_bert(tokenizer), tokenizer, "Lily went home.")
