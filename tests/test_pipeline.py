"""The tutorial's code on batchnlp (issue 30): every call of a Hugging Face "pipeline basics"
tutorial (../shared/seed-calls.md), with `from transformers import pipeline` replaced by `from
batchnlp import pipeline` and the hub ids by local tiny models, runs unchanged and returns what
transformers' own pipeline returns on the same model — structure and values — where transformers
5 still has that pipeline; question answering, summarization and translation (gone from
transformers 5) return transformers 4's structures, with batchnlp's values (which the rest of the
suite checks against 4.57's recorded answers and against `generate`)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from batchnlp import pipeline
from batchnlp.errors import UserError

from helpers import TEXTS


def theirs(task, model_dir, **kwargs):
    from transformers import pipeline as hf_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf_pipeline(task, model=str(model_dir), device="cpu", **kwargs)


def same(ours, reference, atol=1e-5):
    """Equal structures: the same keys and nesting, strings and ints equal, floats within atol."""
    if isinstance(reference, dict):
        assert isinstance(ours, dict) and list(ours) == list(reference), (ours, reference)
        for key in reference:
            same(ours[key], reference[key], atol)
    elif isinstance(reference, (list, tuple)):
        assert isinstance(ours, list) and len(ours) == len(reference), (ours, reference)
        for a, b in zip(ours, reference):
            same(a, b, atol)
    elif isinstance(reference, (float, np.floating)):
        assert ours == pytest.approx(reference, abs=atol)
    else:
        assert ours == reference


def test_sentiment_analysis_as_the_tutorial_types_it(classifier_dir):
    sentiment_analyzer = pipeline("sentiment-analysis", model=str(classifier_dir))
    reference = theirs("sentiment-analysis", classifier_dir)
    same(sentiment_analyzer(TEXTS[0]), reference(TEXTS[0]))  # a str: a list of one dict
    same(sentiment_analyzer(TEXTS, batch_size=8), reference(TEXTS, batch_size=8))  # a list: a dict each
    same(sentiment_analyzer(TEXTS, top_k=2), reference(TEXTS, top_k=2))  # top_k: a list each
    same(sentiment_analyzer(TEXTS[:3], top_k=None), reference(TEXTS[:3], top_k=None))  # every label
    same(sentiment_analyzer(TEXTS[:3], top_k=1), reference(TEXTS[:3], top_k=1))  # given, even 1: a list each
    # device numbers and torch dtypes as the tutorial passes them; truncation/padding/max_length
    import torch

    cpu = pipeline("sentiment-analysis", model=str(classifier_dir), device=-1, torch_dtype=torch.float32)
    same(cpu(TEXTS, truncation=True, padding=True, max_length=512), reference(TEXTS, truncation=True, padding=True,
                                                                              max_length=512))
    generated = (t for t in TEXTS)  # a generator in, a generator out
    same(list(sentiment_analyzer(generated)), reference(TEXTS))
    # a datasets.Dataset through transformers' KeyDataset, as the tutorials feed one
    import datasets
    from transformers.pipelines.pt_utils import KeyDataset

    dataset = datasets.Dataset.from_dict({"text": TEXTS})
    same(list(sentiment_analyzer(KeyDataset(dataset, "text"), batch_size=4)),
         list(reference(KeyDataset(dataset, "text"), batch_size=4)))


def test_the_tutorials_mixed_precision_line(classifier_dir):
    """`device=0 if torch.cuda.is_available() else -1, torch_dtype=torch.float16`: float16 on a GPU;
    on a CPU-only machine batchnlp refuses float16 in one line saying what to pass instead (it
    does not switch precision silently)."""
    import torch

    def make():
        return pipeline("sentiment-analysis", model=str(classifier_dir),
                        device=0 if torch.cuda.is_available() else -1, torch_dtype=torch.float16)

    if torch.cuda.is_available():
        assert make()(TEXTS[0])[0]["label"] in {"negative", "neutral", "positive"}
        return
    with pytest.raises(UserError, match=r"float16 on the CPU.*dtype='auto'"):
        make()


@pytest.mark.parametrize("strategy", ["simple", "none"])
def test_ner_with_an_aggregation_strategy(ner_dir, strategy):
    ner_pipeline = pipeline("ner", aggregation_strategy=strategy, model=str(ner_dir))
    reference = theirs("ner", ner_dir, aggregation_strategy=strategy)
    texts = ["George Washington went to Washington and met Ada Lovelace in London", *TEXTS[:4]]
    for text in texts:
        same(ner_pipeline(text), reference(text), atol=1e-4)
    same(ner_pipeline(texts), reference(texts), atol=1e-4)


@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_with_candidate_labels(nli_dir, multi_label):
    classifier = pipeline("zero-shot-classification", model=str(nli_dir))
    reference = theirs("zero-shot-classification", nli_dir)
    labels = ["sports", "politics", "business"]
    same(classifier(TEXTS[1], labels, multi_label=multi_label),
         reference(TEXTS[1], labels, multi_label=multi_label), atol=1e-4)  # the labels by position
    same(classifier(TEXTS[:4], candidate_labels=labels, multi_label=multi_label),
         reference(TEXTS[:4], candidate_labels=labels, multi_label=multi_label), atol=1e-4)


def test_fill_mask_top_k(mlm_dir):
    fill_mask = pipeline("fill-mask", model=str(mlm_dir))
    reference = theirs("fill-mask", mlm_dir)
    sentence = "the movie was [MASK] and the music was great"
    same(fill_mask(sentence, top_k=3), reference(sentence, top_k=3), atol=1e-4)
    same(fill_mask([sentence, "it broke after a [MASK]"], top_k=2),
         reference([sentence, "it broke after a [MASK]"], top_k=2), atol=1e-4)


def test_text_generation_greedy_and_sampled(causal_dir):
    text_generator = pipeline("text-generation", model=str(causal_dir), device=-1)
    reference = theirs("text-generation", causal_dir)
    prompt = "the story was"
    same(text_generator(prompt, max_new_tokens=8, do_sample=False),
         reference(prompt, max_new_tokens=8, do_sample=False))  # the prompt and its continuation
    same(text_generator([prompt, "great"], max_new_tokens=5, return_full_text=False, do_sample=False),
         reference([prompt, "great"], max_new_tokens=5, return_full_text=False, do_sample=False))
    # the tutorial's sampled call: its structure (sampling draws its own random numbers)
    sampled = text_generator(prompt, max_new_tokens=10, num_return_sequences=1, temperature=0.7, do_sample=True,
                             pad_token_id=text_generator.tokenizer.eos_token_id)
    assert [list(item) for item in sampled] == [["generated_text"]] and sampled[0]["generated_text"].startswith(prompt)
    with pytest.raises(UserError, match="give max_new_tokens"):
        text_generator(prompt, max_length=20)


def test_feature_extraction_gives_every_tokens_vector(encoder_dir):
    extractor = pipeline("feature-extraction", model=str(encoder_dir))
    reference = theirs("feature-extraction", encoder_dir)
    same(extractor(TEXTS[1]), reference(TEXTS[1]), atol=1e-4)  # [[one vector per token]]
    same(extractor(TEXTS[:3]), [reference(t) for t in TEXTS[:3]], atol=1e-4)


def test_question_answering_with_question_and_context(qa_dir):
    qa_pipeline = pipeline("question-answering", model=str(qa_dir))
    context = "The capital is Paris, France and nothing else."
    answer = qa_pipeline(question="What is the capital?", context=context)
    assert list(answer) == ["score", "start", "end", "answer"] and answer["answer"] == "Paris, France"
    assert context[answer["start"]:answer["end"]] == "Paris, France" and 0 < answer["score"] <= 1
    many = qa_pipeline(question=["Where?", "What?"], context=[context, context])
    assert [a["answer"] for a in many] == ["Paris, France"] * 2
    assert qa_pipeline({"question": "Where?", "context": context}) == many[0]


def test_summarization_and_translation_lengths(bart_dir, marian_dir):
    summarizer = pipeline("summarization", model=str(bart_dir))
    long_text = " ".join(TEXTS)
    summary = summarizer(long_text, max_length=12, min_length=4, do_sample=False)
    assert [list(s) for s in summary] == [["summary_text"]]
    # generate's max_length counts the decoder's start token: 12 -> at most 11 new tokens
    tokens = summarizer.tokenizer(summary[0]["summary_text"], add_special_tokens=False)["input_ids"]
    assert len(tokens) <= 11
    assert [list(s) for s in summarizer([long_text, TEXTS[0]], max_length=12)] == [["summary_text"]] * 2
    translator = pipeline("translation_en_to_de", model=str(marian_dir))
    translated = translator(TEXTS[0])
    assert [list(t) for t in translated] == [["translation_text"]]
    assert translator(TEXTS[:2]) == [translator(TEXTS[0])[0], translator(TEXTS[1])[0]]


def test_a_loaded_model_and_tokenizer_with_a_retry_wrapper(classifier_dir):
    """`pipeline(task, model=model_obj, tokenizer=tokenizer_obj)` after `from_pretrained`, called
    through the tutorial's retry wrapper."""
    import time

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(classifier_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(classifier_dir))
    classifier = pipeline("sentiment-analysis", model=model, tokenizer=tokenizer)

    def with_retries(text, attempts=3):
        for attempt in range(attempts):
            try:
                return classifier(text)
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0)  # (the tutorial backs off exponentially; nothing fails here)

    same(with_retries(TEXTS[2]), theirs("sentiment-analysis", classifier_dir)(TEXTS[2]))


def test_what_batchnlp_cannot_honour_is_one_line(classifier_dir):
    classifier = pipeline("sentiment-analysis", model=str(classifier_dir))
    with pytest.raises(UserError, match="truncation=False"):
        classifier(TEXTS, truncation=False)
    with pytest.raises(UserError, match="give the task"):
        pipeline(model=str(classifier_dir))
    with pytest.raises(UserError, match="model_kwargs"):
        pipeline("sentiment-analysis", model=str(classifier_dir), model_kwargs={"load_in_8bit": True})



def test_question_answering_equals_the_recorded_4x_pipeline():
    """qa(question=[...], context=[...]) on the committed tiny QA model against transformers 4.57's
    answers, recorded (tests/data/make_qa_reference.py): the 4.x structure, one dict per question
    (top_k 1) or a list of dicts (top_k 3, with the null answer), the same offsets and scores."""
    import csv
    import json
    from pathlib import Path

    data = Path(__file__).parent / "data"
    reference = json.loads((data / "qa_pipeline_4x.json").read_text())
    with open(data / "qa_rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    qa_pipeline = pipeline("question-answering", model=str(data / "qa_model"))
    for name in ("top1", "top3_null"):
        settings = reference[name]["settings"]
        answers = qa_pipeline(question=[r["question"] for r in rows], context=[r["context"] for r in rows],
                              **settings)
        for got, expected in zip(answers, reference[name]["answers"]):
            got = got if isinstance(got, list) else [got]
            assert [(a["answer"], a["start"], a["end"]) for a in got] == \
                   [(a["answer"], a["start"], a["end"]) for a in expected], name
            assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], abs=1e-5)
            assert all(list(a) == ["score", "start", "end", "answer"] for a in got)
