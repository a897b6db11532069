"""The job spec: parsed from YAML or TOML and validated here, and only here, into frozen dataclasses.

Every error is a `SpecError` naming the key in the job file (`runtime.dtype: ...`). Checks that
need the data (does the column exist?) live in `batchnlp.read.plan` and name the key too.
Nothing here imports torch, so `batchnlp validate` stays instant.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from batchnlp.errors import SpecError, collect
from batchnlp.settings import build, doc, kind_of
from batchnlp.storage import check_url, is_url
from batchnlp.tasks import canonical, task_class

INPUT_FORMATS = ("csv", "parquet", "jsonl", "openai-batch")
_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl",
               ".ndjson": "jsonl"}


@dataclass(frozen=True)
class InputSpec:
    text_column: str = doc("Column holding the text to annotate.", identity=True)
    path: str | None = doc("A file, a directory or a glob (relative to the job file's folder), or the same in "
                           "object storage (s3://bucket/corpus/*.parquet, gs://, az://, hf://).",
                           default=None, identity=True)
    format: Literal["csv", "parquet", "jsonl", "openai-batch"] | None = doc(
        "csv | parquet | jsonl | openai-batch (the OpenAI Batch API's request file: each line's custom_id and "
        "body.messages become the columns custom_id and messages); taken from the file extension when omitted.",
        default=None, identity=True)
    text_pair_column: str | None = doc("Optional second text (sentence pairs, e.g. NLI).", default=None, identity=True)
    id_column: str | None = doc("Optional column identifying each row (kept; uniqueness is not checked).",
                                default=None, identity=True)
    encoding: str = doc("Character encoding of CSV files.", default="utf-8", identity=True)
    dataset: str | None = doc("A Hugging Face dataset: a `save_to_disk` directory (local or in a bucket) or a "
                              "hub id.", default=None, identity=True)
    revision: str | None = doc("Hub dataset revision (required for a hub dataset id).", default=None, identity=True)
    split: str | None = doc("Dataset split (required for a hub dataset id).", default=None, identity=True)
    storage_options: dict[str, Any] | None = doc(
        "For an input in object storage: fsspec options (endpoint_url, key, secret, profile, ...). Never written "
        "to the output's log; credentials are better left to the environment (AWS_PROFILE, ...).",
        default=None, identity=False)
    columns: list[str] | None = doc(
        "The input columns to keep, in this order (the text, pair and id columns are always kept); default: "
        "every column seen in any file, in first-seen order.", default=None, identity=True)
    new_columns: Literal["add", "ignore", "refuse"] = doc(
        "A column first seen in a later file: add it (nullable; earlier rows hold null), ignore it, or refuse "
        "the file.", default="add", identity=True)
    incremental: Literal["files", "ids"] = doc(
        "files: a file is new, unchanged or changed as a whole (a changed one is refused or annotated again "
        "whole). ids: a new or changed file's rows whose id_column value the output already holds (with the "
        "same text) are skipped, new ids annotated into new parts; needs a unique id_column.", default="files",
        identity=True)
    type_changes: Literal["cast", "refuse"] = doc(
        "A column whose type in a file differs from the output's: cast it where no information is lost (int32 "
        "-> int64, numbers -> string; anything else is refused naming the file, column and types), or refuse.",
        default="cast", identity=True)


@dataclass(frozen=True)
class ModelSpec:
    id: str | None = doc("Hugging Face hub model id; needs `revision`.", default=None, identity=True)
    revision: str | None = doc("Hub tag, branch or commit; resolved to a commit SHA in the output's record.",
                               default=None, identity=True)
    path: str | None = doc("A local model directory (save_pretrained layout).", default=None, identity=True)
    package: str | None = doc("An installed Python package that ships a model directory.", default=None, identity=True)
    subpath: str = doc("Directory of the model inside `package`.", default="", identity=True)
    trust_remote_code: bool = doc("Allow model code from the model repository to run.", default=False, identity=True)
    allow_missing_weights: bool = doc("Run even if the checkpoint lacks weights the task's model class needs "
                                      "(they are then random): for speed benchmarks only.",
                                      default=False, identity=True)
    gguf_file: str | None = doc("A GGUF checkpoint inside the model directory, package or hub repo (needs the "
                                "`gguf` extra); it is dequantised to the runtime dtype when loaded.",
                                default=None, identity=True)

    @property
    def source(self) -> str:
        return "hub" if self.id else "path" if self.path else "package"


@dataclass(frozen=True)
class RuntimeSpec:
    device: str = doc("auto | cpu | cuda | cuda:N (auto: cuda when available).", default="auto", identity=False)
    dtype: Literal["auto", "float32", "float16", "bfloat16", "int8"] = doc(
        "auto: float16 on CUDA; on a CPU with native bfloat16 (AVX512-BF16/AMX) bfloat16 autocast if a probe "
        "on the first rows agrees with float32, else float32. int8: dynamic int8 linear layers (CPU).",
        default="auto", identity=True)
    max_length: int | None = doc("Truncate inputs to this many tokens (default: the model's limit).",
                                 default=None, identity=True)
    batch_tokens: int = doc("Budget of padded tokens per batch (batch size x longest row).",
        default=16384, identity="sampling")
    max_batch_size: int = doc("Upper bound on rows per batch.", default=256, identity="sampling")
    num_workers: int = doc("DataLoader worker processes that pad batches (0: in the main process).",
                           default=0, identity=False)
    engine: Literal["local", "ray"] = doc("local: this process; ray: a Ray cluster (the `ray` extra).",
                                          default="local", identity=False)
    ray_address: str | None = doc(
        "engine ray: an existing cluster's GCS address (head-host:6379, or auto); none starts a local one. "
        "ray:// (Ray Client) addresses are refused.",
                                  default=None, identity=False)
    threads: int | None = doc("CPU threads for the model (default: torch's, one per physical core). Reading, "
                              "tokenizing and writing run in two more threads beside them.",
                              default=None, identity=False)
    shared_storage: bool = doc(
        "engine ray with an existing cluster (--address): the local input and output paths are on storage "
        "every node mounts at the same path (NFS, a shared disk). Without it such paths are refused: a part "
        "written on another node's own disk would be lost.", default=False, identity=False)
    stall_seconds: float = doc(
        "End the run as failed (exit 2, one line saying what it waited for) when it makes no progress for "
        "this long: no batch, commit or object-store answer; a model load or a long batch counts while the "
        "process computes. The committed parts are kept; the next run resumes.", default=300.0, identity=False)
    retry_seconds: float = doc(
        "How long an object store may stay unreachable (refused or reset connections, timeouts, 5xx, "
        "throttling) before the run gives up (exit 2): the calls are retried with exponential backoff and "
        "jitter meanwhile, each retry a log line.", default=300.0, identity=False)


@dataclass(frozen=True)
class OutputSpec:
    path: str = doc("Output directory, or a prefix in object storage (s3://bucket/annotated/): Parquet parts "
                    "plus the hidden log .batchnlp/.", identity=False)
    rows_per_shard: int = doc("Input rows per output part; the unit of progress and resume.",
        default=5000, identity=True)
    prefix: str = doc("Prefix for the annotation column names (avoids clashes with input columns).",
                      default="", identity=True)
    storage_options: dict[str, Any] | None = doc(
        "For an output in object storage: fsspec options, as for input.storage_options (never recorded).",
        default=None, identity=False)
    on_changed: Literal["refuse", "reprocess", "skip"] = doc(
        "An input file whose content changed since it was annotated: refuse the run (exit 2, nothing done), "
        "reprocess it (its parts are replaced), or skip it (its earlier annotations are kept, the other files "
        "are annotated, and the run names it and exits 3). --reprocess-changed overrides it for one run.",
        default="refuse", identity=False)
    on_removed: Literal["refuse", "drop", "keep"] = doc(
        "An input file that was annotated and is gone: refuse the run, drop its rows, or keep them. "
        "--drop-removed / --keep-removed override it for one run.", default="refuse", identity=False)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    params: Any  # the task's own frozen Params dataclass


@dataclass(frozen=True)
class JobSpec:
    input: InputSpec
    task: TaskSpec
    model: ModelSpec
    runtime: RuntimeSpec
    output: OutputSpec
    source_file: str = ""
    source_text: str = ""
    #: The relative paths of the job as written ({"input.path": "data/x.csv"}); the fields hold them resolved.
    paths_as_written: dict[str, str] = dataclasses.field(default_factory=dict)
    #: The folder relative paths resolve against: the job file's, or the working directory's.
    base_dir: str = ""
    #: `--set key=value` given on the command line, and the environment variables the file used.
    overrides: tuple[str, ...] = ()
    variables: tuple[str, ...] = ()

    def portable(self) -> dict[str, Any]:
        """`resolved()` with each path as written where it was relative to the job's folder: what
        identifies the job wherever the project (job, inputs, output together) is moved."""
        data = self.resolved()
        for key, value in self.paths_as_written.items():
            section, name = key.split(".")
            data[section][name] = value
        return data

    def resolved(self) -> dict[str, Any]:
        """The spec with every default filled in, as plain data (for the output's record and fingerprints).
        Storage options are left out: they hold credentials, and may change between runs."""
        return {
            "input": _without_storage_options(self.input),
            "task": {"name": self.task.name, **dataclasses.asdict(self.task.params)},
            "model": dataclasses.asdict(self.model),
            "runtime": dataclasses.asdict(self.runtime),
            "output": _without_storage_options(self.output),
        }

    @property
    def has_storage_options(self) -> bool:
        return bool(self.input.storage_options or self.output.storage_options)


def _without_storage_options(section: Any) -> dict[str, Any]:
    data = dataclasses.asdict(section)
    data.pop("storage_options")
    return data


# ---------------------------------------------------------------------------------------------
# The job spec


def load_text(path: str | Path) -> tuple[dict[str, Any], str]:
    """Read a YAML or TOML job file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("", f"job file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError("", f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the job file as UTF-8") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise SpecError("", f"{path}: job files end in .yaml, .yml or .toml")
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        what = " ".join(str(part) for part in (e.context, e.problem) if part)
        raise SpecError("", f"{path}{where}: not valid YAML: {what}") from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        message = " ".join(str(e).split())  # one line
        raise SpecError("", f"{path}: not valid {path.suffix[1:].upper()}: {message}") from None
    if not isinstance(data, dict):
        raise SpecError("", f"{path}: expected the sections input, task, model, runtime, output")
    return data, text


def load_spec(path: str | Path, overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> JobSpec:
    """A job file, its relative paths resolved against the job file's folder (so a job runs the
    same from any working directory, e.g. from cron); `${VAR}` / `${VAR:-default}` in its values
    expanded from the environment, then `overrides` (`--set key=value`) applied."""
    data, text, variables = _resolved_data(path, overrides, environ)
    job_file = Path(path).resolve()
    spec = parse(data, base_dir=job_file.parent)
    return dataclasses.replace(spec, source_file=str(job_file), source_text=text, overrides=tuple(overrides),
                               variables=tuple(variables))


def _resolved_data(path: str | Path, overrides: Sequence[str], environ: Mapping[str, str] | None = None
                   ) -> tuple[dict[str, Any], str, list[str]]:
    """(the job file's data with `${VAR}`s expanded and `--set`s applied, its text, the variables used)."""
    data, text = load_text(path)
    data, variables = expand(data, os.environ if environ is None else environ)
    return apply_overrides(data, overrides), text, variables


#: `${NAME}` or `${NAME:-default}`; `$${` writes a literal `${`.
_VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(data: Any, environ: Mapping[str, str], key: str = "") -> tuple[Any, list[str]]:
    """The job's values with `${VAR}` expanded (a value that is one variable alone is read as
    YAML, so `rows_per_shard: ${ROWS:-5000}` is a number); the names of the variables used. An
    unset variable without a default is a SpecError naming it and the key."""
    used: list[str] = []
    if isinstance(data, dict):
        out = {}
        for name, value in data.items():
            out[name], names = expand(value, environ, f"{key}.{name}" if key else str(name))
            used += names
        return out, used
    if isinstance(data, list):
        items = [expand(value, environ, f"{key}[{i}]") for i, value in enumerate(data)]
        return [value for value, _ in items], [n for _, names in items for n in names]
    if not isinstance(data, str) or "${" not in data:
        return data, used

    def value_of(match: re.Match) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name in environ:
            used.append(name)
            return environ[name]
        if default is not None:
            return default
        raise SpecError(key, f"${{{name}}} is not set in the environment; export {name}, or write "
                             f"${{{name}:-default}} for a default")

    whole = _VARIABLE.fullmatch(data)
    expanded = _VARIABLE.sub(value_of, data)
    if whole is not None and whole.group(0) != "$${":
        try:
            return yaml.safe_load(expanded) if expanded.strip() else expanded, used
        except yaml.YAMLError:
            return expanded, used
    return expanded, used


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` on a copy of the job's data: dotted keys (`runtime.device=cpu`,
    `task.labels=[a, b]`), values read as YAML."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError("--set", f"{item!r}: expected KEY=VALUE, e.g. --set output.path=s3://bucket/out")
        parts = key.split(".")
        if parts[0] not in SECTIONS or len(parts) < 2 or not all(parts):
            raise SpecError("--set", f"{key}: a key is SECTION.NAME, with SECTION one of {', '.join(SECTIONS)} "
                                     "(e.g. runtime.device)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise SpecError("--set", f"{key}: the value {raw!r} is not valid YAML ({' '.join(str(e).split())})") \
                from None
        node = data
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise SpecError("--set", f"{key}: {'.'.join(parts[:depth + 1])} is not a section of keys")
            node = node[part]
        node[parts[-1]] = value
    return data


SECTIONS = ("input", "task", "model", "runtime", "output")
#: The keys that hold paths; relative ones are resolved against the job file's folder.
PATH_KEYS = (("input", "path"), ("input", "dataset"), ("model", "path"), ("output", "path"))


def parse(data: dict[str, Any], base_dir: str | Path | None = None) -> JobSpec:
    """A job from plain data; relative paths resolve against `base_dir` (default: the working
    directory). The paths as written are kept in `JobSpec.paths_as_written`."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    sections, written, problems = _sections(data, base)
    collect(problems)
    spec = JobSpec(**sections, paths_as_written=written, base_dir=os.path.abspath(base))
    task_class(spec.task.name).check_input(spec.task.params, spec.input)
    _check_output_placement(spec)
    return spec


def _sections(data: dict[str, Any], base: Path) -> tuple[dict[str, Any], dict[str, str], list[SpecError]]:
    """Each section parsed on its own: (those that parsed, the paths as written, every problem)."""
    problems = [SpecError(name, f"unknown section; sections are: {', '.join(SECTIONS)}")
                for name in sorted(set(data) - set(SECTIONS), key=str)]
    problems += [SpecError(name, "required section is missing") for name in ("input", "task", "model", "output")
                 if name not in data]
    data, written = _resolve_paths(data, base)
    parsers = {"input": _parse_input, "task": _parse_task, "model": _parse_model, "runtime": _parse_runtime,
               "output": _parse_output}
    sections = {}
    for name, parser in parsers.items():  # every section checked: all their problems at once
        if name in data or name == "runtime":
            try:
                sections[name] = parser(data.get(name) or {} if name == "runtime" else data[name])
            except SpecError as e:
                problems.append(e)
    return sections, written, problems


def load_partial(path: str | Path, overrides: Sequence[str] = ()) -> tuple[JobSpec, list[SpecError]]:
    """For `validate`, a job file with problems: the job with None for each section that did not
    parse (the runtime's defaults for a broken runtime), and the problems, so that the input, the
    model and the output can still be checked."""
    data, _, _ = _resolved_data(path, overrides)
    base = Path(path).resolve().parent
    sections, written, problems = _sections(data, base)
    parts = {name: sections.get(name) for name in ("input", "task", "model", "output")}
    spec = JobSpec(**parts, runtime=sections.get("runtime") or RuntimeSpec(), paths_as_written=written,
                   base_dir=str(base), source_file=str(Path(path).resolve()))
    if len(sections) == len(SECTIONS):  # the checks across sections
        for check in (lambda: task_class(spec.task.name).check_input(spec.task.params, spec.input),
                      lambda: _check_output_placement(spec)):
            try:
                check()
            except SpecError as e:
                problems.append(e)
    return spec, problems


def _resolve_paths(data: dict[str, Any], base: Path) -> tuple[dict[str, Any], dict[str, str]]:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    written = {}
    for section, key in PATH_KEYS:
        value = data[section].get(key) if isinstance(data.get(section), dict) else None
        if not isinstance(value, str) or not value:
            continue
        if key != "dataset" or "://" in value:
            check_url(f"{section}.{key}", value, write=section == "output")
        if value.startswith("file://"):
            value = data[section][key] = value[len("file://"):]
        if "://" in value or Path(value).is_absolute():
            continue
        resolved = base / value
        if key == "dataset" and not resolved.exists():
            continue  # a hub dataset id, not a directory
        written[f"{section}.{key}"] = value
        data[section][key] = os.path.abspath(resolved)  # absolute, with ".." folded (links kept)
    return data, written


def _check_output_placement(spec: JobSpec) -> None:
    """The output may not sit inside the input: the next run would read its own parts as input
    (or --overwrite would delete input files)."""
    if is_url(spec.output.path) or is_url(spec.input.path or spec.input.dataset or ""):
        inside = _url_root(spec.input.path or spec.input.dataset or "")
        out_url = spec.output.path.rstrip("/") + "/"
        if inside and out_url.startswith(inside):
            raise SpecError("output.path", f"{spec.output.path} is inside the input ({inside}); the next run would "
                                           "read the output as input: choose an output.path outside it")
        return
    out = Path(spec.output.path).absolute()
    root = _input_root(spec.input)
    if root is None:
        return
    if out == root or root in out.parents:
        what = "a directory the input is read from" if root.is_dir() or not root.exists() else "the input file"
        raise SpecError("output.path", f"{out} is {'inside ' if out != root else ''}{what} ({root}); the next "
                                       "run would read the output as input: choose an output.path outside it")


def _url_root(url: str) -> str:
    """The prefix an input URL reads under (a glob's folder before its first wildcard), ending in /."""
    wildcard = next((i for i, c in enumerate(url) if c in "*?["), None)
    if wildcard is None:
        return url.rstrip("/") + "/"
    return url[:wildcard].rsplit("/", 1)[0] + "/"


def _input_root(spec: InputSpec) -> Path | None:
    """The file or directory an input is read from (a glob's folder before its first wildcard)."""
    raw = spec.path or (spec.dataset if spec.dataset and Path(spec.dataset).exists() else None)
    if raw is None:
        return None
    parts = Path(raw).parts
    fixed = [p for p in parts[:next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))]]
    return Path(*fixed).absolute() if fixed else Path.cwd()


def _parse_input(data: Any) -> InputSpec:
    if isinstance(data, dict) and data.get("format") == "openai-batch":
        data = {**data}
        for key, column in (("text_column", "messages"), ("id_column", "custom_id")):
            if data.setdefault(key, column) != column:
                raise SpecError(f"input.{key}", f"an openai-batch file's rows have the columns custom_id and "
                                                f"messages; leave input.{key} out (or give {column!r})")
    spec = build(InputSpec, data, "input")
    if bool(spec.path) == bool(spec.dataset):
        raise SpecError("input", "give exactly one of input.path (files) or input.dataset (Hugging Face dataset)")
    if spec.incremental == "ids" and not spec.id_column:
        raise SpecError("input.incremental", "ids needs input.id_column: the column that identifies each row")
    if spec.incremental == "ids" and spec.dataset:
        raise SpecError("input.incremental", "ids works on input files (input.path), not on a dataset")
    if spec.dataset:
        local = Path(spec.dataset).exists() or is_url(spec.dataset)
        if not local and not (spec.revision and spec.split):
            raise SpecError("input.revision" if not spec.revision else "input.split",
                            f"required for the hub dataset {spec.dataset!r}: pin a revision (tag or commit) and "
                            "name a split; or point input.dataset at a save_to_disk directory")
        return spec
    if spec.format is None:
        fmt = _EXTENSIONS.get(Path(spec.path.rstrip("/*")).suffix.lower())
        if fmt is None and not _is_dir_or_glob(spec.path):
            raise SpecError("input.format", f"cannot tell the format of {spec.path!r} from its extension; "
                                            f"set input.format to one of {', '.join(INPUT_FORMATS)}")
        spec = dataclasses.replace(spec, format=fmt)
    return spec


def _is_dir_or_glob(path: str) -> bool:
    return is_url(path) or Path(path).is_dir() or any(c in path for c in "*?[")


def _parse_task(data: Any) -> TaskSpec:
    if not isinstance(data, dict):
        raise SpecError("task", f"expected a table with at least `name`, got {kind_of(data)}")
    data = dict(data)
    name = data.pop("name", None)
    if not isinstance(name, str):
        raise SpecError("task.name", "required: the task to run (see `batchnlp tasks`)")
    cls = task_class(name)
    _misplaced(data, cls.Params)
    for key, value in canonical(name)[1].items():  # translation_en_to_de: the languages in the name
        if data.setdefault(key, value) != value:
            raise SpecError(f"task.{key}", f"{data[key]!r}, but the task name {name!r} says {value!r}; give one")
    params = build(cls.Params, data, "task")
    if hasattr(params, "validate"):
        params.validate()
    return TaskSpec(name=name, params=params)


_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def _parse_model(data: Any) -> ModelSpec:
    spec = build(ModelSpec, data, "model")
    given = [k for k in ("id", "path", "package") if getattr(spec, k)]
    if len(given) != 1:
        raise SpecError("model", "give exactly one of model.id (hub, with model.revision), model.path "
                                 "(a local directory) or model.package (an installed package)")
    if spec.id:
        if not _HUB_ID.match(spec.id):
            raise SpecError("model.id", f"{spec.id!r} is not a hub id like 'org/name'; "
                                        "for a directory on disk use model.path")
        if not spec.revision:
            raise SpecError("model.revision", "required for hub models; pin a tag or a commit")
    elif spec.revision:
        raise SpecError("model.revision", "only applies to hub models (model.id)")
    if spec.subpath and not spec.package:
        raise SpecError("model.subpath", "only applies to model.package")
    if spec.gguf_file is not None and not spec.gguf_file.endswith(".gguf"):
        raise SpecError("model.gguf_file", f"{spec.gguf_file!r} is not a .gguf file name")
    return spec


#: Settings a transformers pipeline user writes in the task's place, and the section they belong to.
_OTHER_SECTIONS = {"batch_size": "runtime", "torch_dtype": "runtime", "dtype": "runtime", "device": "runtime",
                   "max_batch_size": "runtime", "batch_tokens": "runtime", "num_workers": "runtime",
                   "revision": "model", "trust_remote_code": "model", "model": "model", "tokenizer": "model"}


def _misplaced(data: dict[str, Any], params: type) -> None:
    """A setting of another section written in the task's (`task.batch_size`): named with the key
    that takes it, rather than an unknown setting of the task."""
    own = {f.name for f in dataclasses.fields(params)}
    collect([SpecError(f"task.{key}", f"a {section} setting, not the task's: write it under {section} "
                                      f"({section}.{key})")
             for key, section in _OTHER_SECTIONS.items() if key in data and key not in own])


#: transformers' names in `runtime` (a pipeline's `batch_size`, `torch_dtype`, `device=0`), as
#: (name, batchnlp's name).
PIPELINE_NAMES = (("batch_size", "max_batch_size"), ("torch_dtype", "dtype"))
DTYPE_NAMES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16", "bf16": "bfloat16"}


def _pipeline_names(data: Any) -> Any:
    """runtime as batchnlp names it: `batch_size` (rows per batch) is `max_batch_size`, `torch_dtype`
    (a string; "torch.float16" too) is `dtype`, and a device number (-1: the CPU, N: cuda:N) the
    device's name."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for alias, name in PIPELINE_NAMES:
        if alias in data:
            if name in data:
                raise SpecError(f"runtime.{alias}", f"runtime.{alias} (transformers' name) and runtime.{name} are "
                                                    "the same setting; give one")
            data[name] = data.pop(alias)
    if isinstance(data.get("dtype"), str):
        data["dtype"] = dtype_named(data["dtype"])
    device = data.get("device")
    if isinstance(device, int) and not isinstance(device, bool):
        data["device"] = device_named(device)
    return data


def dtype_named(text: str) -> str:
    """A dtype as a pipeline user writes it ("torch.float16", "fp16", "half") as batchnlp names it."""
    text = text.removeprefix("torch.")
    return DTYPE_NAMES.get(text, text)


def device_named(number: int) -> str:
    """A pipeline's device number: -1 the CPU, N cuda:N."""
    return "cpu" if number < 0 else f"cuda:{number}"


def _parse_runtime(data: Any) -> RuntimeSpec:
    spec = build(RuntimeSpec, _pipeline_names(data), "runtime")
    if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", spec.device):
        raise SpecError("runtime.device", f"must be auto, cpu, cuda or cuda:N; got {spec.device!r}")
    for key in ("batch_tokens", "max_batch_size"):
        if getattr(spec, key) < 1:
            raise SpecError(f"runtime.{key}", "must be at least 1")
    if spec.max_length is not None and spec.max_length < 2:
        raise SpecError("runtime.max_length", "must be at least 2 (room for the special tokens)")
    if spec.num_workers < 0:
        raise SpecError("runtime.num_workers", "must be 0 or more")
    if spec.threads is not None and spec.threads < 1:
        raise SpecError("runtime.threads", "must be 1 or more")
    for key in ("stall_seconds", "retry_seconds"):
        if getattr(spec, key) <= 0:
            raise SpecError(f"runtime.{key}", "must be more than 0 seconds")
    if spec.ray_address and spec.ray_address.startswith("ray://"):
        raise SpecError("runtime.ray_address", RAY_CLIENT)
    return spec


#: Why ray:// addresses are refused: the streaming executor of Ray Data cannot run under Ray Client.
RAY_CLIENT = ("ray:// (Ray Client) cannot run Ray Data's streaming executor that the ray engine uses; run "
              "batchnlp on a node of the cluster and give the GCS address instead (head-host:6379, or auto)")


def _parse_output(data: Any) -> OutputSpec:
    spec = build(OutputSpec, data, "output")
    if spec.rows_per_shard < 1:
        raise SpecError("output.rows_per_shard", "must be at least 1")
    return spec
