"""Every task against a reference: transformers' own pipelines where they still exist (same tiny
model, same inputs: labels and words exactly, scores to 1e-4), `model.generate` one row at a
time for the encoder-decoders, a model built to pick a known span for question answering."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from helpers import run
from batchnlp.spec import load_spec

from helpers import invoke, read_output, record, write_job

LONG = ("the story was slow but the ending was excellent and the music was great, i would recommend it to anyone "
        "who likes a good film with a long plot and great acting. the price of the ticket was cheap and the "
        "screen and the sound quality were the best")
MIXED = ["ok", LONG, "great battery", "the coffee machine broke after a week, never again", "fine", LONG[:150],
         "love it", "what is the capital of france"]
BUDGETS = [40, 256, 100_000]  # 40 tokens: one long row per batch; 100k: everything in one batch


def run_task(tmp_path, model_dir, task, rows, runtime=None, text_pair=None, name="job.yaml", **input_extra):
    path = tmp_path / "input.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = write_job(tmp_path, input={"path": str(path), "text_column": "text",
                                     **({"text_pair_column": text_pair} if text_pair else {}), **input_extra},
                    task=task, model={"path": str(model_dir)}, runtime=runtime, name=name,
                    output={"path": str(tmp_path / "out"), "rows_per_shard": 5})
    run(load_spec(job), overwrite=True, quiet=True)
    return read_output(tmp_path / "out")


def oracle(task, model_dir, **kwargs):
    from transformers import pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline(task, model=str(model_dir), device="cpu", **kwargs)


# -- zero-shot -----------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_matches_pipeline(tmp_path, nli_dir, budget, multi_label):
    labels = ["sports", "politics", "business", "science", "world"]
    table = run_task(tmp_path, nli_dir, {"name": "zero-shot-classification", "candidate_labels": labels,
                                         "multi_label": multi_label},
                     [{"text": t} for t in MIXED], runtime={"batch_tokens": budget})
    pipe = oracle("zero-shot-classification", nli_dir)
    for text, got_labels, got_scores in zip(MIXED, table.column("labels").to_pylist(),
                                            table.column("scores").to_pylist()):
        expected = pipe(text, candidate_labels=labels, multi_label=multi_label)
        assert got_labels == expected["labels"]
        np.testing.assert_allclose(got_scores, expected["scores"], atol=1e-4)


def test_zero_shot_labels_from_a_column(tmp_path, nli_dir):
    rows = [{"text": "great battery", "candidates": ["good", "bad"]},
            {"text": "the city", "candidates": ["world", "sports"]}, {"text": "no labels", "candidates": []}]
    table = run_task(tmp_path, nli_dir, {"name": "zero-shot-classification", "candidate_labels_column": "candidates"},
                     rows)
    pipe = oracle("zero-shot-classification", nli_dir)
    for row, got in zip(rows[:2], table.column("labels").to_pylist()[:2]):
        assert got == pipe(row["text"], candidate_labels=row["candidates"])["labels"]
    assert table.column("error").to_pylist() == [None, None, "no candidate labels"]

    csv = tmp_path / "labels.csv"  # a CSV holds the labels as one comma-separated string
    csv.write_text('text,candidates\nthe city,"world, sports"\n')
    job = write_job(tmp_path, input={"path": str(csv), "text_column": "text"}, model={"path": str(nli_dir)},
                    task={"name": "zero-shot-classification", "candidate_labels_column": "candidates"}, name="csv.yaml")
    run(load_spec(job), overwrite=True, quiet=True)
    assert read_output(tmp_path / "out").column("labels").to_pylist() == [
        pipe("the city", candidate_labels=["world", "sports"])["labels"]]


def _answer_logprob(model, prompt_ids, answer_ids):
    """log P(answer | prompt) from one forward of the whole sequence, no cache, no padding."""
    with torch.inference_mode():
        logprobs = model(torch.tensor([prompt_ids + answer_ids])).logits[0].log_softmax(-1)
    return sum(logprobs[len(prompt_ids) - 1 + j, token].item() for j, token in enumerate(answer_ids))


INSTRUCTION = "Read the review below and say what it is mostly about, in one of the labels given.\n{text}"


@pytest.mark.parametrize("chat,multi_label,scoring,template,hypothesis", [
    (False, False, "total", None, None), (True, False, "total", None, None), (False, False, "mean", None, None),
    (True, True, "total", None, None), (False, False, "total", INSTRUCTION, None),
    (True, True, "mean", INSTRUCTION + " {label}", None), (True, False, "mean", INSTRUCTION, "The answer is {}"),
    (False, False, "total", INSTRUCTION, "The answer is {}")])
def test_zero_shot_causal_lm_scores_each_label_as_the_answer(tmp_path, causal_dir, monkeypatch, chat, multi_label,
                                                              scoring, template, hypothesis):
    """Against the brute force: each (prompt, label) pair run whole, alone. Batches of left-padded
    prompts of different lengths with labels scored on the prompts' KV cache must give the same
    log-likelihoods (GPT-2's learned positions make any padding or position slip show). With an
    instruction before {text}, the prompts' shared beginning runs once for the batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchnlp.tasks import decoding, likelihood, zero_shot

    shared = []
    spy = likelihood._shared_cache
    monkeypatch.setattr(likelihood, "_shared_cache", lambda *a, **k: shared.append(spy(*a, **k)) or shared[-1])
    labels = ["good", "bad thing", "neutral"]
    table = run_task(tmp_path, causal_dir, {"name": "zero-shot-classification", "method": "causal-lm",
                                            "candidate_labels": labels, "chat_template": chat,
                                            "multi_label": multi_label, "label_scoring": scoring,
                                            **({"prompt_template": template} if template else {}),
                                            **({"hypothesis_template": hypothesis} if hypothesis else {})},
                     [{"text": t} for t in MIXED], runtime={"batch_tokens": 400})
    if template:  # the shared-prefix path ran: the prompts begin with the instruction
        assert max(tokens for tokens, _, _ in shared) >= likelihood.MIN_SHARED
    tokenizer = AutoTokenizer.from_pretrained(causal_dir)
    model = AutoModelForCausalLM.from_pretrained(causal_dir).eval()
    end = likelihood.end_of_turn(tokenizer) if chat else []
    assert end == ([tokenizer.convert_tokens_to_ids("</s>")] if chat else [])  # the template's end of turn

    def prompt_ids(text, template, answers, **slots):
        prompt = decoding.build_prompt(tokenizer, template, text, chat, None, **slots)
        ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
        return ids[-(128 - max(len(a) for a in answers)):]  # the model's 128 positions

    for text, got_labels, got_scores in zip(MIXED, table.column("labels").to_pylist(),
                                            table.column("scores").to_pylist()):
        if multi_label:
            yes, no = (tokenizer(a, add_special_tokens=False)["input_ids"][:1] for a in ("Yes", "No"))
            expected = []
            for label in labels:
                ids = prompt_ids(text, template or zero_shot.MULTI_PROMPT, [yes], label=label)
                pair = np.array([_answer_logprob(model, ids, yes), _answer_logprob(model, ids, no)])
                expected.append(pair[0] - np.logaddexp(*pair))  # log P(Yes) / (P(Yes) + P(No))
            expected = np.array(expected)
        else:
            answers = [tokenizer((hypothesis or "{}").format(label), add_special_tokens=False)["input_ids"] + end
                       for label in labels]
            ids = prompt_ids(text, template or zero_shot.PROMPT, answers, labels=", ".join(labels))
            values = np.array([_answer_logprob(model, ids, a) / (len(a) if scoring == "mean" else 1)
                               for a in answers])
            expected = values - np.logaddexp.reduce(values)  # log softmax over the labels
        order = np.argsort(-expected, kind="stable")
        assert got_labels == [labels[i] for i in order]
        # log scale: the tiny model's scores are near 0 or 1, where an absolute tolerance hides slips
        np.testing.assert_allclose(np.log(got_scores), expected[order], atol=2e-3)
        if not multi_label:
            assert sum(got_scores) == pytest.approx(1.0, abs=1e-5)


def test_causal_lm_one_token_labels_cost_the_prompt_forward_alone(causal_dir):
    """The answers' common beginning ("The answer is") runs as the end of the prompts, and labels
    of one token each are read from the prompts' last logits: one forward for the batch, whatever
    the number of labels. Leaving that beginning out of the totals (common_counts=False) takes
    away the same amount from every answer of a row: its log-probability after the prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchnlp.tasks import likelihood

    tokenizer = AutoTokenizer.from_pretrained(causal_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(causal_dir).eval()
    lead = likelihood.answer_ids(tokenizer, "The answer is")
    answers = {label: lead + [token] for label, token in zip("abc", (30, 31, 32))}
    texts = ["great battery", "the coffee machine broke after a week"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    with torch.inference_mode():
        full = likelihood.score(model, batch, answers)
        assert len(forwards) == 1
        without = likelihood.score(model, batch, answers, common_counts=False)
    assert len(forwards) == 2
    for row, text in enumerate(texts):
        prompt = tokenizer(text)["input_ids"]
        for label, tokens in answers.items():
            assert full[label][row].item() == pytest.approx(_answer_logprob(model, prompt, tokens), abs=1e-3)
            assert (full[label][row] - without[label][row]).item() == pytest.approx(
                _answer_logprob(model, prompt, lead), abs=1e-3)


def test_prefix_cache_runs_the_shared_beginning_once_for_all_batches(causal_dir):
    """A job's prompts share their template's beginning: it runs once (here from the first batch,
    a lone row) and later batches reuse its KV cache, one forward each, with the same totals as
    each prompt run whole (GPT-2's learned positions show any slip in the reused part). A cache
    computed under bfloat16 autocast is not reused without it, nor the other way round."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchnlp.tasks import likelihood

    tokenizer = AutoTokenizer.from_pretrained(causal_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(causal_dir).eval()
    instruction = "Read the review below and say what it is mostly about.\n"
    batches = [["great battery"], ["the coffee machine broke after a week", "fine"], ["ok", "a good movie", "das"]]
    answers = {"a": [30], "b": [31, 32]}
    prefix = likelihood.PrefixCache()
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))

    def run(texts, **autocast):
        forwards.clear()
        batch = tokenizer([instruction + t for t in texts], padding=True, return_tensors="pt")
        with torch.inference_mode(), torch.autocast("cpu", **autocast):
            return likelihood.score(model, batch, answers, prefix=prefix), len(forwards)

    def assert_brute_force(texts, scores):
        for row, text in enumerate(texts):
            prompt = tokenizer(instruction + text)["input_ids"]
            for label, tokens in answers.items():
                assert scores[label][row].item() == pytest.approx(_answer_logprob(model, prompt, tokens), abs=1e-3)

    # The lone row runs its prompt but the last token first, then that token and label b's second.
    scores, count = run(batches[0], enabled=False)
    assert count == 3 and len(prefix.tokens) == len(tokenizer(instruction + batches[0][0])["input_ids"]) - 1
    assert_brute_force(batches[0], scores)
    for texts in batches[1:]:
        scores, count = run(texts, enabled=False)
        assert count == 2  # the rows' own tokens, then label b's second token: no forward of the beginning
        assert_brute_force(texts, scores)
    assert tokenizer.decode(prefix.tokens) == instruction  # shortened to what every batch shares
    _, count = run(batches[1], dtype=torch.bfloat16)
    assert count == 3  # computed again under autocast
    scores, count = run(batches[2], enabled=False)
    assert count == 3  # and again without it
    assert_brute_force(batches[2], scores)


@pytest.mark.parametrize("task,message", [
    ({"method": "causal-lm", "multi_label": True, "prompt_template": "{text}?"}, "must contain {label}"),
    ({"method": "causal-lm", "prompt_template": "no text"}, "must contain {text}"),
    ({"method": "nli", "chat_template": True}, "task.chat_template: only applies to method: causal-lm"),
    ({"method": "causal-lm", "system_prompt": "be brief"}, "only applies with chat_template"),
])
def test_zero_shot_causal_lm_spec_errors(tmp_path, causal_dir, task, message):
    from batchnlp.errors import SpecError

    job = write_job(tmp_path, input={"path": str(tmp_path / "x.csv"), "text_column": "text"},
                    task={"name": "zero-shot-classification", "candidate_labels": ["a", "b"], **task},
                    model={"path": str(causal_dir)})
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(job)


def test_validate_refuses_a_classifier_for_causal_lm(tmp_path, nli_dir, reviews_csv):
    from click.testing import CliRunner

    from batchnlp.cli import main

    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "zero-shot-classification", "candidate_labels": ["a", "b"], "method": "causal-lm"},
                    model={"path": str(nli_dir)})
    result = CliRunner().invoke(main, ["validate", str(job)])
    assert result.exit_code == 2 and "not a causal language model, which zero-shot-classification with method: " \
        "causal-lm needs" in result.output


def test_zero_shot_embedding_method(tmp_path, encoder_dir):
    from transformers import AutoModel, AutoTokenizer

    labels = ["sports", "business", "science"]
    table = run_task(tmp_path, encoder_dir, {"name": "zero-shot-classification", "candidate_labels": labels,
                                             "method": "embedding", "temperature": 0.1},
                     [{"text": t} for t in MIXED])
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = AutoModel.from_pretrained(encoder_dir).eval()

    def embed(text):
        with torch.inference_mode():
            vector = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(0)
        return torch.nn.functional.normalize(vector, dim=-1).numpy()

    label_vectors = np.stack([embed(label) for label in labels])
    for text, got_labels, got_scores in zip(MIXED, table.column("labels").to_pylist(),
                                            table.column("scores").to_pylist()):
        logits = label_vectors @ embed(text) / 0.1
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        order = np.argsort(-probs)
        assert got_labels == [labels[i] for i in order]
        np.testing.assert_allclose(got_scores, probs[order], atol=1e-4)


# -- fill-mask -----------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", BUDGETS)
def test_fill_mask_matches_pipeline(tmp_path, mlm_dir, budget):
    texts = ["the movie was {mask}.", "paris is the [MASK] of france", LONG + " {mask}", "{mask} it"]
    table = run_task(tmp_path, mlm_dir, {"name": "fill-mask", "top_k": 3}, [{"text": t} for t in texts],
                     runtime={"batch_tokens": budget})
    pipe = oracle("fill-mask", mlm_dir)
    for text, got in zip(texts, table.column("predictions").to_pylist()):
        expected = pipe(text.replace("{mask}", "[MASK]"), top_k=3)
        assert [(p["token"], p["token_str"], p["sequence"]) for p in got] == \
               [(p["token"], p["token_str"], p["sequence"]) for p in expected]
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in expected], atol=1e-4)


def test_fill_mask_targets_and_bad_rows(tmp_path, mlm_dir):
    texts = ["the movie was {mask}.", "no mask here", "two [MASK] and {mask}"]
    table = run_task(tmp_path, mlm_dir, {"name": "fill-mask", "targets": ["good", "bad", "great"]},
                     [{"text": t} for t in texts])
    expected = oracle("fill-mask", mlm_dir)("the movie was [MASK].", targets=["good", "bad", "great"])
    got = table.column("predictions").to_pylist()[0]
    assert [p["token_str"] for p in got] == [p["token_str"] for p in expected]
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in expected], atol=1e-4)
    errors = table.column("error").to_pylist()
    assert errors[0] is None
    assert errors[1] == "expected exactly one mask ({mask} or [MASK]), found 0"
    assert errors[2] == "expected exactly one mask ({mask} or [MASK]), found 2"
    assert table.column("predictions").to_pylist()[1:] == [None, None]


# -- token classification ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
@pytest.mark.parametrize("budget", [40, 100_000])
def test_token_classification_matches_pipeline(tmp_path, ner_dir, strategy, budget):
    texts = MIXED + ["Paris, France: the capital city of France is Paris.", "unknownword xyz'q paris"]
    table = run_task(tmp_path, ner_dir, {"name": "ner", "aggregation_strategy": strategy},
                     [{"text": t} for t in texts], runtime={"batch_tokens": budget})
    pipe = oracle("token-classification", ner_dir, aggregation_strategy=strategy)
    key = "entity" if strategy == "none" else "entity_group"
    compared = 0
    for text, got in zip(texts, table.column("entities").to_pylist()):
        expected = pipe(text)
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == \
               [(e[key], e["word"], e["start"], e["end"]) for e in expected]
        np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in expected], atol=1e-4)
        for e in got:
            assert text[e["start"]:e["end"]].lower().replace(" ", "") == e["word"].replace("##", "").replace(" ", "")
        compared += len(got)
    assert compared > 10  # the random model does find entities to compare


def test_long_text_is_windowed_and_nothing_is_lost(tmp_path, ner_dir):
    words = [f"{w}{i % 10}" for i, w in enumerate(("paris france city capital " * 80).split())]
    text = " ".join(words)  # 640 tokens, past the 512 of a BERT: six windows of 128
    table = run_task(tmp_path, ner_dir, {"name": "ner", "aggregation_strategy": "none", "ignore_labels": [],
                                         "stride": 16}, [{"text": text}], runtime={"max_length": 128})
    tokens = table.column("entities").to_pylist()[0]
    from transformers import AutoTokenizer

    offsets = AutoTokenizer.from_pretrained(ner_dir)(text, add_special_tokens=False,
                                                     return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) > 600
    assert [(t["start"], t["end"]) for t in tokens] == [tuple(o) for o in offsets]  # every token once, in order
    manifest = record(tmp_path / "out")
    assert manifest["parts"][0]["features"] == 6 and manifest["totals"]["rows_at_max_length"] == 0


# -- question answering --------------------------------------------------------------------------


def test_question_answering_finds_the_span_with_exact_offsets(tmp_path, qa_dir):
    filler = " ".join(["the city is a good city and the music is great."] * 12)  # ~150 tokens: 4+ windows
    rows = [
        {"q": "what is the capital?", "c": "The capital is Paris, France. It is a city."},
        {"q": "where?", "c": filler + " At the end: Paris, France!"},  # only in a later window
        {"q": "where?", "c": "Paris,  FRANCE  is far"},
    ]
    table = run_task(tmp_path, qa_dir, {"name": "question-answering", "doc_stride": 16, "top_k": 2},
                     [{"text": r["q"], "ctx": r["c"]} for r in rows], text_pair="ctx",
                     runtime={"max_length": 48})
    answers = table.column("answer").to_pylist()
    assert answers == ["Paris, France", "Paris, France", "Paris,  FRANCE"]
    for row, start, end, answer in zip(rows, table.column("start").to_pylist(), table.column("end").to_pylist(),
                                       answers):
        assert row["c"][start:end] == answer
    assert table.column("start").to_pylist()[1] > len(filler)
    scores = table.column("score").to_pylist()
    assert all(0.9 < s <= 1.0 for s in scores)
    second = table.column("answers").to_pylist()[0]
    assert second[0]["answer"] == "Paris, France" and second[1]["score"] < second[0]["score"]
    manifest = record(tmp_path / "out")
    assert manifest["totals"]["features"] > 6  # the long context really was split


def test_question_answering_needs_a_context_column(tmp_path, qa_dir):
    from batchnlp.errors import SpecError

    with pytest.raises(SpecError, match="input.text_pair_column: required by question-answering"):
        run_task(tmp_path, qa_dir, {"name": "question-answering"}, [{"text": "q"}])


def test_impossible_answer(tmp_path, qa_dir):
    table = run_task(tmp_path, qa_dir, {"name": "question-answering", "handle_impossible_answer": True},
                     [{"text": "where?", "ctx": "nothing relevant in this text"}], text_pair="ctx")
    assert table.column("answer").to_pylist() == [""]
    assert table.column("start").to_pylist() == [0] and table.column("end").to_pylist() == [0]


# -- embeddings vs feature-extraction ------------------------------------------------------------


@pytest.mark.parametrize("budget", BUDGETS)
def test_embeddings_match_feature_extraction_pipeline(tmp_path, encoder_dir, budget):
    table = run_task(tmp_path, encoder_dir, {"name": "embeddings", "normalize": False},
                     [{"text": t} for t in MIXED], runtime={"batch_tokens": budget})
    pipe = oracle("feature-extraction", encoder_dir)
    for text, got in zip(MIXED, table.column("embedding").to_pylist()):
        expected = np.array(pipe(text)[0]).mean(0)
        np.testing.assert_allclose(got, expected, atol=1e-4)


# -- generation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [40, 100_000])
def test_greedy_generation_matches_pipeline(tmp_path, causal_dir, budget):
    prompts = ["the quick brown", "a good movie with great acting and a slow plot", "das", "the battery of"]
    table = run_task(tmp_path, causal_dir, {"name": "text-generation", "max_new_tokens": 8},
                     [{"text": t} for t in prompts], runtime={"batch_tokens": budget})
    pipe = oracle("text-generation", causal_dir)
    for prompt, got in zip(prompts, table.column("generated_text").to_pylist()):
        expected = pipe(prompt, max_new_tokens=8, do_sample=False, return_full_text=False)[0]["generated_text"]
        assert got == expected


def test_own_greedy_loop_matches_generate_as_rows_end(causal_dir):
    """batchnlp's greedy loop against model.generate on a left-padded batch whose rows end at
    different steps (end tokens chosen from the rows' own continuations), with a shared prompt
    beginning: the same tokens up to each row's end, whatever rows have left the batch, and when
    that beginning's cache is kept from batch to batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchnlp.tasks import likelihood, refill

    tokenizer = AutoTokenizer.from_pretrained(causal_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(causal_dir).eval()
    prompts = ["Summarise this in a few words please: " + t for t in ["the quick brown", "das", "a good movie",
                                                                       "the battery of my phone", "fine", "ok then"]]
    batch = dict(tokenizer(prompts, return_tensors="pt", padding=True))
    with torch.inference_mode():
        free = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = free[:, batch["input_ids"].shape[1]:].tolist()
    eos = {new[0][2], new[1][5], new[3][8]}  # rows 0, 1 and 3 (at least) end early, at different steps
    with torch.inference_mode():
        expected = model.generate(**batch, max_new_tokens=12, do_sample=False, eos_token_id=sorted(eos),
                                  pad_token_id=tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
        made = refill.greedy(model, batch, 12, eos, None, tokenizer)
    assert len(made[0]) <= 3 and len(made[1]) <= 6 and len({len(t) for t in made}) >= 3  # ended at 3+ steps
    for row, tokens in zip(expected.tolist(), made):
        assert tokens == row[:len(tokens)] and all(t == tokenizer.pad_token_id for t in row[len(tokens):])
    # The same prompts in batches of one, two and three, the shared beginning kept from the first.
    prefix, again = likelihood.PrefixCache(), []
    with torch.inference_mode():
        for part in ([1], [0, 3], [2, 4, 5]):
            rows = dict(tokenizer([prompts[i] for i in part], return_tensors="pt", padding=True))
            again += zip(part, refill.greedy(model, rows, 12, eos, None, tokenizer, prefix))
    assert tokenizer.decode(prefix.tokens).startswith("Summarise this in a few words please:")
    assert [tokens for _, tokens in sorted(again)] == made


def test_greedy_prefills_prompts_of_different_lengths_in_groups_and_decodes_them_as_one(causal_dir, monkeypatch):
    """A batch of one long and three short prompts: the long one's padding would triple the short
    ones' forward, so they prefill in two groups, whose caches are merged (each row right-aligned,
    the gap masked) into one batch that decodes together. Tokens must be each prompt's own greedy
    continuation (model.generate, one prompt at a time, no padding; GPT-2's learned positions show
    any slip), with rows ending early, and again when the prompts' beginning is kept from before."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchnlp.tasks import likelihood, refill

    tokenizer = AutoTokenizer.from_pretrained(causal_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(causal_dir).eval()
    prompts = ["Summarise this in a few words please: " + t for t in [LONG[:120], "ok", "great battery", "fine"]]
    with torch.inference_mode():
        alone = [model.generate(**tokenizer(p, return_tensors="pt"), max_new_tokens=10, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)[0, len(tokenizer(p)["input_ids"]):].tolist()
                 for p in prompts]
    eos = {alone[1][3], alone[2][6]}
    expected = []
    for tokens in alone:  # each up to and with its first end token
        ends = [i for i, t in enumerate(tokens) if t in eos]
        expected.append(tokens[:ends[0] + 1] if ends else tokens)
    assert len({len(t) for t in expected}) >= 2
    groups = []
    prefill = likelihood.prefill
    monkeypatch.setattr(likelihood, "prefill", lambda model, ids, *a, **k: groups.append(ids.shape) or
                        prefill(model, ids, *a, **k))
    batch = dict(tokenizer(prompts, return_tensors="pt", padding=True))
    prefix = likelihood.PrefixCache()
    with torch.inference_mode():
        assert refill.greedy(model, batch, 10, eos, None, tokenizer) == expected
        assert [rows for rows, _ in groups] == [1, 3]  # the long prompt alone, the short ones together
        assert groups[1][1] < batch["input_ids"].shape[1] // 2
        for _ in range(2):  # the first keeps the long prompt's beginning, the second the shared part
            assert refill.greedy(model, batch, 10, eos, None, tokenizer, prefix) == expected
    assert tokenizer.decode(prefix.tokens).startswith("Summarise this in a few words please:")
    # Cache layers of another kind (sliding window, quantised) are not merged: after the first
    # group shows them, the batch runs as one.
    import transformers.cache_utils

    monkeypatch.setattr(transformers.cache_utils, "DynamicLayer", type("OtherLayer", (), {}))
    groups.clear()
    with torch.inference_mode():
        assert refill.greedy(model, batch, 10, eos, None, tokenizer) == expected
    assert [rows for rows, _ in groups] == [1, 4]


def test_grouped_attention_on_cpu_matches_transformers(tmp_path, grouped_dir, monkeypatch):
    """A model with grouped key/value heads (Llama, SmolLM2) runs batchnlp's attention on a CPU,
    where SDPA takes the groups itself instead of copies: greedy texts and label scores as with
    transformers' eager attention, over batches of padded prompts whose shared beginning is kept
    from batch to batch (RoPE positions and the padding mask must both come through)."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchnlp.tasks import decoding

    grouped = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: grouped.append(k.get("enable_gqa") and k["attn_mask"] is not None)
                        or sdpa(*a, **k))
    template = "Read the review below and say what it is mostly about.\n{text}"
    short = [t for t in MIXED if t != LONG]  # LONG is cut to the model's 128 positions, which the pipeline is not
    rows = [{"text": t} for t in short]
    (tmp_path / "gen").mkdir(), (tmp_path / "zs").mkdir()
    texts = run_task(tmp_path / "gen", grouped_dir, {"name": "text-generation", "max_new_tokens": 6,
                                                     "prompt_template": template}, rows, runtime={"batch_tokens": 80})
    assert any(grouped)  # the grouped path ran under a padding mask (transformers groups only without one)
    pipe = oracle("text-generation", grouped_dir, model_kwargs={"attn_implementation": "eager"})
    for text, got in zip(short, texts.column("generated_text").to_pylist()):
        prompt = template.format(text=text)
        assert got == pipe(prompt, max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"]

    labels = ["good", "bad thing"]
    table = run_task(tmp_path / "zs", grouped_dir, {"name": "zero-shot-classification", "method": "causal-lm",
                                                    "candidate_labels": labels, "prompt_template": template},
                     rows, runtime={"batch_tokens": 80})
    tokenizer = AutoTokenizer.from_pretrained(grouped_dir)
    eager = AutoModelForCausalLM.from_pretrained(grouped_dir, attn_implementation="eager").eval()
    answers = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    for text, got_labels, got_scores in zip(short, table.column("labels").to_pylist(),
                                            table.column("scores").to_pylist()):
        ids = tokenizer(decoding.build_prompt(tokenizer, template, text, False, None))["input_ids"]
        values = np.array([_answer_logprob(eager, ids, a) for a in answers])
        expected = dict(zip(labels, values - np.logaddexp.reduce(values)))
        np.testing.assert_allclose(np.log(got_scores), [expected[label] for label in got_labels], atol=2e-3)


def test_greedy_row_that_ends_at_its_first_token(causal_dir):
    """A row whose first token is an end token leaves the batch before the cache has been written
    to (the preallocated buffer does not exist yet): it crashed the batch of three at stop 24."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchnlp.tasks import refill

    tokenizer = AutoTokenizer.from_pretrained(causal_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(causal_dir).eval()
    batch = dict(tokenizer(["a good movie", "fine", "ok then"], return_tensors="pt", padding=True))
    with torch.inference_mode():
        free = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        made = refill.greedy(model, batch, 4, {free[0, -4].item()}, None, tokenizer)
    assert made[0] == [free[0, -4].item()]
    for row, tokens in zip(free[1:, -4:].tolist(), made[1:]):
        assert tokens == row[:len(tokens)]


@pytest.mark.parametrize("model_name", ["causal", "grouped"])
def test_refilled_batch_decodes_each_prompt_as_alone(request, model_name):
    """Continuous batching: 9 prompts of different lengths through a batch of 3 that is refilled
    as rows end (end tokens picked so rows end at different steps): each prompt's tokens are its
    own greedy continuation (model.generate, one prompt at a time, no padding; GPT-2's learned
    positions and Llama's RoPE both show a slipped position), rows that join mid-way included; a
    rerun takes the same steps; and the steps run fuller than batches of 3 that only drain."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchnlp.tasks import refill

    directory = request.getfixturevalue(f"{model_name}_dir")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    texts = ["the quick brown fox jumps", "das", "a good movie with great acting", "the battery", "fine",
             "where is the capital of france", "ok then", "summarize: the committee met on monday", "it is paris"]
    prompts = [(i, tokenizer(t)["input_ids"]) for i, t in enumerate(texts)]
    with torch.inference_mode():
        free = [model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist() for _, ids in prompts]
        eos = {free[0][1], free[3][4], free[5][7]}
        alone = [model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=sorted(eos),
                                pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist() for _, ids in prompts]
        runs = []
        for capacity in (3, 3, len(prompts)):
            occupancy = refill.Occupancy()
            made = dict((key, tokens) for key, tokens, _ in refill.decode(
                model, prompts, capacity, refill.Ending(10, eos), occupancy=occupancy))
            runs.append((made, occupancy))
    made, occupancy = runs[0]
    assert len({len(t) for t in made.values()}) >= 3 and occupancy.groups >= 3  # rows ended apart, refilled
    for key, expected in enumerate(alone):
        ended = next((i + 1 for i, t in enumerate(expected) if t in eos), len(expected))
        assert made[key] == expected[:ended], key
    assert runs[1] == runs[0]  # the same tokens, steps and groups again
    assert runs[2][0] == made  # one batch holding every prompt: the same tokens
    # Every token but a row's first (from its prefill) takes a decode step with the row live.
    assert occupancy.live == sum(map(len, made.values())) - len(prompts)
    # Without refilling, 3 batches of 3 (in order) each drain to their longest row: more steps
    # for the same live rows, so a lower occupancy.
    steps = sum(max(len(made[k]) for k in range(i, i + 3)) - 1 for i in range(0, 9, 3))
    assert occupancy.steps < steps


def test_a_refilled_cache_does_not_grow_with_the_rows_it_has_seen(causal_dir, monkeypatch):
    """48 prompts through a batch of 3, refilled some 20 times: the merged cache keeps only the
    positions its rows attend to, so its width stays within two rows' prompt and answer, where
    keeping the history of every row that left would grow it with the steps taken."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchnlp.tasks import refill

    tokenizer = AutoTokenizer.from_pretrained(causal_dir)
    model = AutoModelForCausalLM.from_pretrained(causal_dir).eval()
    texts = ["the quick brown fox", "das", "a good movie", "the battery of", "fine", "where is it"] * 8
    prompts = [(i, tokenizer(t)["input_ids"]) for i, t in enumerate(texts)]
    widths, joined = [], refill._joined

    def watched(running, fresh):
        batch = joined(running, fresh)
        widths.append(batch.mask.shape[1])
        return batch

    monkeypatch.setattr(refill, "_joined", watched)
    with torch.inference_mode():
        free = model.generate(torch.tensor([prompts[0][1]]), max_new_tokens=8, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id)[0, len(prompts[0][1]):].tolist()
        occupancy = refill.Occupancy()
        made = list(refill.decode(model, prompts, 3, refill.Ending(8, {free[2], free[5]}), occupancy=occupancy))
    assert len(made) == len(prompts) and len(widths) >= 10
    longest = max(len(ids) for _, ids in prompts)
    assert max(widths) <= 2 * (longest + 8) < occupancy.steps


def test_generation_keeps_its_batch_full_through_a_run(tmp_path, causal_dir):
    """Through the runner: 10 prompts in a shard whose budget holds 4 at a time give the texts of
    the drained batches (continuous_batching: false) with fewer decode steps, and each part says
    so (decode_steps, occupancy, batch_rows)."""
    prompts = ["the quick brown fox jumps", "das", "a good movie with great acting", "the battery", "fine",
               "where is the capital of france", "ok then", "summarize: the committee met", "it is paris", "a"]
    figures = {}
    for refilled in (True, False):
        (tmp_path / str(refilled)).mkdir()
        table = run_task(tmp_path / str(refilled), causal_dir, {"name": "text-generation", "max_new_tokens": 12,
                                                                 "stop": ["s"], "continuous_batching": refilled},
                         [{"text": t} for t in prompts], runtime={"batch_tokens": 4 * 30, "max_batch_size": 4})
        figures[refilled] = (table.column("generated_text").to_pylist(), record(tmp_path / str(refilled) / "out"))
    (texts, refilled), (drained_texts, drained) = figures[True], figures[False]
    assert texts == drained_texts and len({len(t) for t in texts}) >= 3  # rows ended at different steps
    for state in (refilled, drained):
        assert all(p["batch_rows"] == 4 for p in state["parts"]) and len(state["parts"]) == 2
    steps = [sum(p["decode_steps"] for p in state["parts"]) for state in (refilled, drained)]
    assert steps[0] < steps[1]
    occupancy = [sum(p["occupancy"] * p["decode_steps"] for p in state["parts"]) / s
                 for state, s in zip((refilled, drained), steps)]
    assert occupancy[0] > occupancy[1]


def test_generation_options(tmp_path, causal_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    table = run_task(tmp_path, causal_dir, {"name": "text-generation", "max_new_tokens": 6, "chat_template": True,
                                            "system_prompt": "be brief", "return_full_text": True,
                                            "num_return_sequences": 2, "num_beams": 2},
                     [{"text": "the quick brown"}])
    texts = table.column("generated_text").to_pylist()[0]
    assert len(texts) == 2 and all(t.startswith("the quick brown") for t in texts)
    tokenizer = AutoTokenizer.from_pretrained(causal_dir)
    model = AutoModelForCausalLM.from_pretrained(causal_dir).eval()
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "the quick brown"}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<s>assistant:")
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=6, num_beams=2, num_return_sequences=2, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert texts == ["the quick brown" + t for t in expected]


def test_stop_strings_cut_the_text(tmp_path, causal_dir):
    free = run_task(tmp_path, causal_dir, {"name": "text-generation", "max_new_tokens": 12},
                    [{"text": "the quick brown"}]).column("generated_text").to_pylist()[0]
    assert len(free) > 4
    stop = free[2:4]
    cut = run_task(tmp_path, causal_dir, {"name": "text-generation", "max_new_tokens": 12, "stop": [stop]},
                   [{"text": "the quick brown"}], name="stop.yaml").column("generated_text").to_pylist()[0]
    assert cut == free[:free.find(stop)]


def test_sampling_is_reproducible_across_a_killed_run(tmp_path, causal_dir):
    rows = [{"text": t} for t in MIXED * 2]
    path = tmp_path / "input.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"name": "text-generation", "max_new_tokens": 6, "do_sample": True, "temperature": 1.5, "seed": 7}

    def job(directory):
        directory.mkdir(exist_ok=True)
        return write_job(directory, input={"path": str(path), "text_column": "text"}, task=task,
                         model={"path": str(causal_dir)},
                         output={"path": str(directory / "out"), "rows_per_shard": 4})

    def launch(j, crash=""):
        return subprocess.run([sys.executable, "-m", "batchnlp", "run", str(j), "--quiet"],
                              env={**os.environ, "BATCHNLP_TEST_CRASH": crash}, capture_output=True, text=True)

    # The uninterrupted run in this process, the killed one and its resumption in two others: the
    # draws depend on the seed and the rows, not on the process.
    assert invoke("run", job(tmp_path / "a"), "--quiet").exit_code == 0
    killed = job(tmp_path / "b")
    assert launch(killed, "shard-recorded:1").returncode == -9
    assert launch(killed).returncode == 0
    a, b = read_output(tmp_path / "a" / "out"), read_output(tmp_path / "b" / "out")
    assert a.equals(b)
    assert len(set(a.column("generated_text").to_pylist())) > 8  # really sampled, not constant


# -- encoder-decoder -----------------------------------------------------------------------------


def generate_one_by_one(model_dir, texts, prefix="", **kwargs):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    out = []
    for text in texts:
        ids = model.generate(**tokenizer(prefix + text, return_tensors="pt"), **kwargs)
        out.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    return out


@pytest.mark.parametrize("budget", [40, 100_000])
def test_summarization_greedy_matches_generate_row_by_row(tmp_path, bart_dir, budget):
    table = run_task(tmp_path, bart_dir, {"name": "summarization", "max_new_tokens": 10},
                     [{"text": t} for t in MIXED], runtime={"batch_tokens": budget})
    assert table.column("summary_text").to_pylist() == generate_one_by_one(bart_dir, MIXED, max_new_tokens=10,
                                                                            do_sample=False)


def test_summarization_beam_search_runs(tmp_path, bart_dir):
    table = run_task(tmp_path, bart_dir, {"name": "summarization", "num_beams": 3, "length_penalty": 1.5,
                                          "no_repeat_ngram_size": 2, "max_new_tokens": 10},
                     [{"text": t} for t in MIXED[:3]])
    expected = generate_one_by_one(bart_dir, MIXED[:3], num_beams=3, length_penalty=1.5, no_repeat_ngram_size=2,
                                   max_new_tokens=10, do_sample=False)
    assert table.column("summary_text").to_pylist() == expected


def test_marian_translation_end_to_end(tmp_path, marian_dir):
    texts = ["the house is wonderful", "the quick brown fox jumps over the lazy dog", "a good movie"]
    table = run_task(tmp_path, marian_dir, {"name": "translation", "max_new_tokens": 12},
                     [{"text": t} for t in texts])
    got = table.column("translation_text").to_pylist()
    assert got == generate_one_by_one(marian_dir, texts, max_new_tokens=12, do_sample=False)
    assert all(isinstance(t, str) and t for t in got)


def test_t5_translation_prefix_and_forced_language_codes():
    from types import SimpleNamespace

    from batchnlp.tasks.translation import Params, Translation

    t5 = SimpleNamespace(model_type="t5", task_specific_params={
        "translation_en_to_de": {"prefix": "translate English to German: "}})
    tokenizer = SimpleNamespace()
    assert Translation(Params(src_lang="en", tgt_lang="de"), t5, tokenizer, 512).prefix == \
           "translate English to German: "
    assert Translation(Params(src_lang="en", tgt_lang="fr"), SimpleNamespace(model_type="t5"), tokenizer,
                       512).prefix == "translate English to French: "

    class NllbTokenizer:
        unk_token_id = 3
        src_lang = None

        def convert_tokens_to_ids(self, token):
            return {"deu_Latn": 42}.get(token, 3)

    nllb = NllbTokenizer()
    task = Translation(Params(src_lang="eng_Latn", tgt_lang="deu_Latn"), SimpleNamespace(model_type="nllb"), nllb,
                       512)
    assert nllb.src_lang == "eng_Latn" and task.generate_extra == {"forced_bos_token_id": 42}


def test_prompt_template(tmp_path, causal_dir):
    template = "review: {text} verdict:"
    table = run_task(tmp_path, causal_dir, {"name": "text-generation", "max_new_tokens": 5,
                                            "prompt_template": template, "return_full_text": True},
                     [{"text": "the battery of"}])
    expected = oracle("text-generation", causal_dir)("review: the battery of verdict:", max_new_tokens=5,
                                                     do_sample=False)[0]["generated_text"]
    assert table.column("generated_text").to_pylist() == [expected]
