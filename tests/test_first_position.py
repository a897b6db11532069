"""A sequence classifier's last layer at the first position only (model/first_position.py): the
same scores as the whole layer for every family it applies to, nothing changed elsewhere, recorded."""

from __future__ import annotations

import pytest
import torch
import transformers

from batchnlp.model import first_position
from batchnlp.spec import load_spec
from helpers import read_output, record, run, write_job

SHAPE = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64, "num_labels": 3, "initializer_range": 0.3}
CONFIGS = {
    "distilbert": lambda: transformers.DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                        num_labels=3, initializer_range=0.3),
    "bert": lambda: transformers.BertConfig(**SHAPE),
    "roberta": lambda: transformers.RobertaConfig(**SHAPE),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(**SHAPE),
    "camembert": lambda: transformers.CamembertConfig(**SHAPE),
    "electra": lambda: transformers.ElectraConfig(embedding_size=32, **SHAPE),
}


def _batch() -> dict[str, torch.Tensor]:
    """Three rows of different lengths, right-padded as the tokenizer pads them."""
    torch.manual_seed(1)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = mask[2, 3:] = 0
    return {"input_ids": torch.randint(5, 120, (3, 9)), "attention_mask": mask}


def test_every_listed_family_is_covered():
    assert set(CONFIGS) == set(first_position.FAMILIES)


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_first_position_gives_the_whole_layers_scores(family, attention):
    """Keys and values from every position, queries and the rest at position 0: the classifier's
    logits and the first position's hidden state as the whole layer gives them (to the sums'
    order). Attention over the first position alone, or any other position kept, differs."""
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(
        CONFIGS[family](), attn_implementation=attention).eval()
    batch = _batch()
    with torch.no_grad():
        logits, hidden = model(**batch).logits, model.base_model(**batch).last_hidden_state
        assert first_position.keep_first_position(model).startswith("first position only")
        got_logits, got_hidden = model(**batch).logits, model.base_model(**batch).last_hidden_state
    assert first_position.last_layer(model) == "first position only"
    assert got_hidden.shape == (3, 1, 32)  # the layer really ran at one position
    assert torch.allclose(got_hidden[:, 0], hidden[:, 0], rtol=1e-5, atol=1e-5)
    assert torch.allclose(got_logits, logits, rtol=1e-5, atol=1e-6)
    # Sanity of the check itself: the rows differ, so a row mixed up would show.
    assert (hidden[0, 0] - hidden[1, 0]).abs().max() > 1e-2
    assert first_position.keep_first_position(model).startswith("first position only")  # idempotent
    assert not isinstance(model.base_model.get_submodule(first_position.FAMILIES[family][0])[-1].layer,
                          first_position.FirstPositionLayer)


def test_int8_layers_are_found_after_quantisation():
    """Dynamic int8 replaces the linear layers after loading: the wrapper looks its modules up at
    each call, so the quantised ones run; the first position's activation scale is its own (not
    the batch's), so its scores move within int8's own error of float32, not beyond."""
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(CONFIGS["distilbert"]()).eval()
    batch = _batch()
    with torch.no_grad():
        exact = model(**batch).logits
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        whole = model(**batch).logits
        first_position.keep_first_position(model)
        got = model(**batch).logits
    assert type(model.distilbert.transformer.layer[-1].layer.attention.inner.k_lin).__module__.startswith("torch.ao")
    assert not torch.equal(got, whole)  # the first position's own scale: int8 figures of its own
    assert (got - exact).abs().max() <= 1.5 * (whole - exact).abs().max()


@pytest.mark.parametrize("make", [
    lambda: transformers.DistilBertForTokenClassification(CONFIGS["distilbert"]()),  # reads every position
    lambda: transformers.AlbertForSequenceClassification(transformers.AlbertConfig(  # one layer shared by all
        vocab_size=120, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64)),
])
def test_other_models_are_left_whole(make):
    model = make().eval()
    before = [name for name, _ in model.named_modules()]
    assert first_position.keep_first_position(model).startswith("every position")
    assert [name for name, _ in model.named_modules()] == before
    assert first_position.last_layer(model) == "every position"


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_a_classification_job_records_its_last_layer_and_labels_as_the_whole_layer(
        tmp_path, classifier_dir, reviews_csv, monkeypatch, dtype):
    """The job's labels with the first position only are those of the whole layer (the switch
    below turns it off), and its record says which ran."""
    labels = {}
    for kept in ("first position only", "every position"):
        if kept == "every position":
            monkeypatch.setattr(first_position, "keep_first_position", lambda model: "every position (test)")
        out = tmp_path / f"{dtype}-{kept.split()[0]}"
        job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                        task={"name": "text-classification"}, model={"path": str(classifier_dir)},
                        runtime={"dtype": dtype}, output={"path": str(out)}, name=f"{out.name}.yaml")
        run(load_spec(job), quiet=True)
        assert record(str(out))["runs"][-1]["last_layer"] == kept
        labels[kept] = read_output(out).sort_by("id").column("label").to_pylist()
    assert labels["first position only"] == labels["every position"] and len(labels["every position"]) > 3
