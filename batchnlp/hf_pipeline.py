"""`batchnlp.pipeline(...)`: transformers' `pipeline` as the tutorials type it, run on batchnlp.

    from batchnlp import pipeline                       # instead of: from transformers import pipeline
    classifier = pipeline("sentiment-analysis", model="models/sst2", device=-1)
    classifier(["great", "awful"], batch_size=8)        # [{"label": ..., "score": ...}, ...]
    ner = pipeline("ner", model="models/conll", aggregation_strategy="simple")
    qa = pipeline("question-answering", model="models/squad")
    qa(question="Where?", context="In Paris.")          # {"score", "start", "end", "answer"}

The same task names (and aliases), constructor arguments, call arguments and return structures as
transformers' pipelines, task by task, for a str, a list or a generator of inputs; behind them a
`batchnlp.Annotator` (the model loaded once, token-budget batches, per-row errors), one per set of
task parameters, all on the one model. transformers 5 has no question-answering, summarization or
translation pipeline; these return what transformers 4 did.

Where a pipeline argument means nothing to batchnlp it is accepted and says so here: `padding`
(batchnlp pads each batch itself; results do not depend on it), `pad_token_id` (generation masks
padding: the value changes no output), `truncation=True` (batchnlp truncates to `max_length`, or
windows long texts for NER and QA). Where it would change results and batchnlp cannot do it, it is
refused in one line (`truncation=False`, a decoder-only model's `max_length`).

`dtype` defaults to float32, as transformers' does, so scores equal the pipeline's; pass
`dtype="auto"` for batchnlp's own choice (bfloat16 on a CPU where it is as good, float16 on CUDA).
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from batchnlp.errors import UserError
from batchnlp.in_memory import Annotator
from batchnlp.spec import device_named, dtype_named
from batchnlp.tasks import canonical

#: Rows handed to the annotator at a time when the input is a generator (results come back as
#: they are made, in input order).
STREAM_CHUNK = 256


def pipeline(task: str | None = None, model: Any = None, tokenizer: Any = None, *, revision: str | None = None,
             device: Any = None, torch_dtype: Any = None, dtype: Any = None, batch_size: int | None = None,
             model_kwargs: Mapping[str, Any] | None = None, trust_remote_code: bool = False,
             **task_params: Any) -> "Pipeline":
    """A pipeline for `task` on `model` (a directory, an installed model package, a hub id with
    `revision`, or a loaded transformers model with its tokenizer)."""
    if task is None:
        raise UserError("pipeline: give the task (e.g. pipeline('sentiment-analysis', model=...)); batchnlp does not "
                        "guess it from the model")
    if model is None:
        raise UserError(f"pipeline: give the model for {task!r} (a directory, an installed model package, or a hub "
                        "id with revision=...): batchnlp has no default model per task")
    kwargs = dict(model_kwargs or {})
    torch_dtype = torch_dtype if torch_dtype is not None else kwargs.pop("torch_dtype", None)
    dtype = dtype if dtype is not None else kwargs.pop("dtype", torch_dtype)
    revision = revision or kwargs.pop("revision", None)
    trust_remote_code = trust_remote_code or bool(kwargs.pop("trust_remote_code", False))
    if kwargs:
        raise UserError(f"pipeline: model_kwargs {sorted(kwargs)} are not supported by batchnlp (it takes torch_dtype, "
                        "dtype, revision and trust_remote_code there)")
    name, implied = canonical(task)
    task_params = _defaults(task, name, task_params)
    source, keep = _model_source(model, tokenizer, revision)
    runtime = {"dtype": dtype_name(dtype), "device": device_name(device),
               **({"max_batch_size": batch_size} if batch_size else {})}
    if runtime["dtype"] == "float16" and runtime["device"] == "cpu":
        raise UserError("pipeline: torch_dtype float16 on the CPU: batchnlp runs float16 on CUDA only (on a CPU it is "
                        "slow and some kernels are missing); leave it out for float32, as transformers' default, or "
                        "pass dtype='auto' (bfloat16 where this CPU computes it natively and it agrees with float32)")
    section = source if isinstance(source, dict) else None
    if trust_remote_code:
        section = {**(section or {"path": str(source)}), "trust_remote_code": True}
    annotator = Annotator(task, section or source, revision=revision if section is None else None,
                          runtime=runtime, progress=False, **{**implied, **_task_params(name, task_params)})
    if name == "text-generation" and "max_new_tokens" not in task_params:
        annotator = annotator.with_settings({"max_new_tokens": _new_tokens(annotator.max_length)})
    return Pipeline(name, task, annotator, keep)


def _new_tokens(context: int) -> int:
    """transformers 5's 256 new tokens, or half the model's context where that is less (batchnlp
    keeps prompt plus generated tokens within it)."""
    return min(256, context // 2)


#: Labels a zero-shot pipeline is built with when its labels come with each call (the task needs
#: some to be checked; no call runs with them).
LABELS_AT_CALL = ["(candidate_labels are given with each call)"]


def _defaults(typed: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """transformers' defaults where batchnlp's differ: text-generation samples (temperature 0.7) and
    returns the prompt with its continuation (transformers 5's TextGenerationPipeline; its 256 new
    tokens are set once the model's context is known, `_new_tokens`); zero-shot labels may come
    with each call."""
    params = dict(params)
    if name == "text-generation":
        for key, value in (("return_full_text", True), ("do_sample", True), ("temperature", 0.7)):
            params.setdefault(key, value)
    if name == "zero-shot-classification":
        params.setdefault("candidate_labels", LABELS_AT_CALL)
    if typed == "feature-extraction":  # every token's vector, unnormalised, as transformers gives them
        params.setdefault("pooling", "none")
        params.setdefault("normalize", False)
    return params


def dtype_name(value: Any) -> str:
    """A torch dtype or its name ("float16", "torch.float16", "fp16") as batchnlp names it; None:
    float32, as transformers' pipeline takes."""
    return "float32" if value is None else dtype_named(str(value))


def device_name(value: Any) -> str:
    """-1 / None: the CPU, N: cuda:N, a torch.device or its name as it is."""
    if value is None:
        return "cpu"  # transformers' pipeline runs on the CPU unless told otherwise
    if isinstance(value, int) and not isinstance(value, bool):
        return device_named(value)
    return str(value)


def _model_source(model: Any, tokenizer: Any, revision: str | None) -> tuple[Any, Any]:
    """(what `Annotator` takes as the model, what must live as long as the pipeline). A loaded
    transformers model (and tokenizer) is saved into a temporary directory once and loaded from
    there: batchnlp loads models itself (device, precision, the converted-model cache)."""
    if hasattr(model, "save_pretrained") and hasattr(model, "config"):
        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            raise UserError("pipeline: a loaded model needs its loaded tokenizer too (tokenizer=AutoTokenizer."
                            "from_pretrained(...))")
        folder = tempfile.TemporaryDirectory(prefix="batchnlp-pipeline-")
        model.save_pretrained(folder.name)
        tokenizer.save_pretrained(folder.name)
        return folder.name, folder
    if tokenizer is not None and not (isinstance(tokenizer, (str, Path)) and str(tokenizer) == str(model)):
        raise UserError("pipeline: batchnlp reads the tokenizer from the model's own directory; give tokenizer only "
                        "with a loaded model, or the same path as the model")
    return model, None


def _task_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Constructor or call arguments as the task's parameters (the pipeline's names where they
    differ); the ones that change nothing in batchnlp dropped, the ones it cannot honour refused."""
    params = dict(params)
    params.pop("padding", None)  # batchnlp pads each batch itself: results do not depend on it
    params.pop("pad_token_id", None)  # generation masks padding: the id changes no output
    if params.pop("truncation", True) is False:
        raise UserError("pipeline: truncation=False: batchnlp truncates every input to max_length (or windows long "
                        "texts for ner and question-answering); it cannot run an input longer than the model takes")
    if name in ("summarization", "translation"):  # generate's max_length counts the decoder's start token
        for length, new in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
            if length in params:
                params[new] = params.pop(length) - 1
    elif name == "text-generation" and ("max_length" in params or "min_length" in params):
        raise UserError("pipeline: text-generation's max_length counts the prompt too, which differs row by row in a "
                        "batch; give max_new_tokens (and min_new_tokens) instead")
    if name == "text-classification" and "top_k" in params:
        params["top_k"] = "all" if params["top_k"] is None else params["top_k"]
    if name == "zero-shot-classification" and isinstance(params.get("candidate_labels"), str):
        params["candidate_labels"] = [label.strip() for label in params["candidate_labels"].split(",")]
    return params


class Pipeline:
    """What `pipeline(...)` returns: call it on a str, a list or a generator of texts (for
    question-answering: question= and context=), with the task's call arguments."""

    def __init__(self, name: str, typed: str, annotator: Annotator, keep: Any = None):
        self.task, self.typed = name, typed
        self.annotator = annotator
        self._variants: dict[tuple, Annotator] = {(): annotator}
        self._keep = keep  # a loaded model's temporary copy, deleted with the pipeline
        self.tokenizer = annotator.tokenizer
        self.model = annotator.model

    def __call__(self, inputs: Any = None, *args: Any, batch_size: int | None = None, max_length: int | None = None,
                 **kwargs: Any) -> Any:
        if self.task == "zero-shot-classification" and args:
            kwargs["candidate_labels"] = args[0]  # clf(text, candidate_labels): the labels by position
        elif args:
            raise UserError(f"pipeline: {self.typed} takes its inputs and keyword arguments only")
        if self.task == "question-answering":
            return self._answer(inputs, kwargs, batch_size, max_length)
        if max_length is not None and self.task not in ("summarization", "translation", "text-generation"):
            # the inputs' truncation length, as the tokenizer takes it: at most the model's own
            kwargs["runtime_max_length"] = min(max_length, self.annotator.max_length)
        elif max_length is not None:
            kwargs["max_length"] = max_length
        return self._run(inputs, kwargs, batch_size)

    # -- one variant of the annotator per set of call arguments ---------------------------------

    def _variant(self, kwargs: dict[str, Any], batch_size: int | None) -> Annotator:
        if self.task == "zero-shot-classification" and "candidate_labels" not in kwargs \
                and self.annotator.task_params.get("candidate_labels") == LABELS_AT_CALL:
            raise UserError("pipeline: zero-shot-classification needs candidate_labels (with the call, or when "
                            "the pipeline is made)")
        runtime = {k: v for k, v in (("max_length", kwargs.pop("runtime_max_length", None)),
                                     ("max_batch_size", batch_size)) if v is not None}
        params = _task_params(self.task, kwargs)
        key = tuple(sorted((k, repr(v)) for k, v in {**params, **{f"runtime.{k}": v for k, v in runtime.items()}}
                           .items()))
        if key not in self._variants:
            self._variants[key] = self.annotator.with_settings(params, runtime)
        return self._variants[key]

    def _run(self, inputs: Any, kwargs: dict[str, Any], batch_size: int | None) -> Any:
        annotator = self._variant(kwargs, batch_size)
        shape = _Shape(self.task, annotator)
        if isinstance(inputs, str):
            return shape.single(inputs, annotator([inputs])[0])
        if isinstance(inputs, (list, tuple)):
            return [shape.many(text, row) for text, row in zip(inputs, annotator(list(inputs)))]
        if isinstance(inputs, Iterable) and not isinstance(inputs, (dict, bytes)):
            return self._stream(iter(inputs), annotator, shape)
        if hasattr(inputs, "__getitem__") and hasattr(inputs, "__len__"):  # a torch Dataset (KeyDataset)
            return self._stream((inputs[i] for i in range(len(inputs))), annotator, shape)
        raise UserError(f"pipeline: {self.typed} takes a str, a list of str or a generator of str, not "
                        f"{type(inputs).__name__}")

    @staticmethod
    def _stream(texts: Iterator[str], annotator: Annotator, shape: "_Shape") -> Iterator[Any]:
        """A generator in, a generator out (as transformers' pipelines do), chunk by chunk."""
        while chunk := list(itertools.islice(texts, STREAM_CHUNK)):
            for text, row in zip(chunk, annotator(chunk)):
                yield shape.many(text, row)  # each item as a list's item

    def _answer(self, inputs: Any, kwargs: dict[str, Any], batch_size: int | None, max_length: int | None) -> Any:
        question, context = kwargs.pop("question", None), kwargs.pop("context", None)
        if inputs is not None:  # qa({"question": ..., "context": ...}) or a list of such dicts
            items = [inputs] if isinstance(inputs, Mapping) else list(inputs)
            question, context = [i["question"] for i in items], [i["context"] for i in items]
            single = isinstance(inputs, Mapping)
        else:
            single = isinstance(question, str)
            question = [question] if single else list(question)
            context = [context] * len(question) if isinstance(context, str) else list(context)
        if max_length is not None:
            kwargs["runtime_max_length"] = min(max_length, self.annotator.max_length)
        import pyarrow as pa

        annotator = self._variant(kwargs, batch_size)
        rows = annotator(pa.table({"text": pa.array(question, pa.string()), "text_pair": pa.array(context, pa.string())}),
                         text_pair_column="text_pair").to_pylist()
        shape = _Shape(self.task, annotator)
        answers = [shape.single(q, row) for q, row in zip(question, rows)]
        return answers[0] if single else answers

    def __repr__(self) -> str:
        return f"batchnlp.pipeline({self.typed!r}, {self.annotator!r})"


class _Shape:
    """transformers' return structure of a task, from the annotator's row (its columns and
    `error`). A row batchnlp could not annotate raises, as the pipeline would have."""

    def __init__(self, task: str, annotator: Annotator):
        self.task, self.annotator = task, annotator
        self.params = annotator.task_params

    def single(self, text: str, row: dict[str, Any]) -> Any:
        """The result for one input given alone (a str)."""
        if row.get("error") is not None:
            raise UserError(f"pipeline: {row['error']} ({text[:60]!r})")
        task = self.task
        if task == "text-classification":
            if self.params.get("top_k", 1) == 1:  # (given or not: one label; `many` tells them apart)
                return [{"label": row["label"], "score": row["score"]}]
            return [dict(entry) for entry in row["scores"]]
        if task == "token-classification":
            return self._entities(text, row["entities"])
        if task == "zero-shot-classification":
            return {"sequence": text, "labels": row["labels"], "scores": row["scores"]}
        if task == "fill-mask":
            return [{"score": p["score"], "token": p["token"], "token_str": p["token_str"], "sequence": p["sequence"]}
                    for p in row["predictions"]]
        if task == "question-answering":
            if self.params.get("top_k", 1) > 1:
                return [{"score": a["score"], "start": a["start"], "end": a["end"], "answer": a["answer"]}
                        for a in row["answers"]]
            return {"score": row["score"], "start": row["start"], "end": row["end"], "answer": row["answer"]}
        if task == "text-generation":
            produced = row["generated_text"]
            return [{"generated_text": t} for t in (produced if isinstance(produced, list) else [produced])]
        if task in ("summarization", "translation"):
            column = "summary_text" if task == "summarization" else "translation_text"
            return [{column: row[column]}]
        if task == "embeddings":  # feature-extraction: [token vectors] (transformers' batch of one)
            return [row["embedding"]] if self.params.get("pooling") == "none" else row["embedding"]
        raise UserError(f"pipeline: no return structure for {task}")

    def many(self, text: str, row: dict[str, Any]) -> Any:
        """The result for one input of a list: as alone, except that a single-answer task gives
        its dict rather than a list of one (transformers' classification and seq2seq pipelines)."""
        one = self.single(text, row)
        if self.task == "text-classification" and "top_k" not in self.params:
            return one[0]  # no top_k: a dict per input (an explicit top_k, even 1: a list per input)
        if self.task in ("summarization", "translation"):
            return one[0]
        return one

    def _entities(self, text: str, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """NER: with aggregation none, transformers names the label `entity` and gives each
        token's `index` in the tokenized text (found here from the token's character offsets)."""
        if self.params.get("aggregation_strategy", "none") != "none":
            return [{"entity_group": e["entity_group"], "score": e["score"], "word": e["word"], "start": e["start"],
                     "end": e["end"]} for e in entities]
        offsets = self.annotator.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        index = {(start, end): i for i, (start, end) in enumerate(offsets)}
        return [{"entity": e["entity_group"], "score": e["score"], "index": index.get((e["start"], e["end"])),
                 "word": e["word"], "start": e["start"], "end": e["end"]} for e in entities]
