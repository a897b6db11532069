"""`batchnlp export OUTPUT --format openai-batch`: an output's answers as the OpenAI Batch API
writes its results, one JSON line per row, so a team that moved its labelling off a hosted batch
keeps the files its downstream reads.

Each line is `{"id", "custom_id", "response": {"status_code": 200, "request_id", "body": <a
chat.completion>}, "error": null}`; the completion's message is the row's generated text (or,
for extraction, its JSON answer), `finish_reason` "stop", or "length" where the answer was cut
at max_new_tokens. A row that could not be annotated at all (an empty prompt, a prompt too
long) gets `"response": null` and an `error` with the row's message, as the API reports a failed
request. Rows go in output order, one part at a time (memory is a batch's, whatever the size).
Everything in a line comes from the output and its log, so exporting twice writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any

from batchnlp.errors import UserError

#: The column holding each task's answer text.
ANSWER = {"text-generation": "generated_text", "extraction": "raw_json"}
BATCH_ROWS = 8192


def export_openai_batch(output: str, to: IO[str]) -> int:
    """Write the output's rows to `to`; returns the number of lines."""
    from batchnlp.api import dataset_of
    from batchnlp.tasks import canonical
    from batchnlp.verification import load
    from batchnlp.write.folder import Folder

    state = load(output)
    job = state.job.get("resolved", {})
    task = canonical(job.get("task", {}).get("name", ""))[0]
    if task not in ANSWER:
        raise UserError(f"export --format openai-batch: {output} holds {task} annotations; chat completions come "
                        f"from {' or '.join(ANSWER)}")
    id_column = job.get("input", {}).get("id_column")
    if not id_column:
        raise UserError(f"export --format openai-batch: {output}'s job has no input.id_column, and every result "
                        "line needs its request's custom_id; set input.id_column (openai-batch input sets it)")
    missing = state.missing_parts(Folder(output).sizes())
    if missing:
        raise UserError(f"{output}: {missing[0]} is missing or altered on disk, so nothing is exported (batchnlp "
                        "verify lists what is wrong)")
    prefix = job.get("output", {}).get("prefix", "")
    columns = [id_column, prefix + ANSWER[task], prefix + "error"]
    model = _model_name(job.get("model", {}))
    created = _finished(state)
    lines = 0
    data = dataset_of(output, state)
    for batch in data.to_batches(columns=columns, batch_size=BATCH_ROWS, fragment_readahead=1, batch_readahead=1,
                                 use_threads=False):
        for custom_id, answer, error in zip(*(batch.column(c).to_pylist() for c in columns)):
            to.write(json.dumps(_line(lines, custom_id, answer, error, model, created), ensure_ascii=False) + "\n")
            lines += 1
    return lines


def _line(number: int, custom_id: Any, answer: str | None, error: str | None, model: str, created: int
          ) -> dict[str, Any]:
    key = hashlib.sha256(f"{custom_id}\0{number}".encode()).hexdigest()[:24]
    if answer is None:
        return {"id": f"batch_req_{key}", "custom_id": custom_id, "response": None,
                "error": {"code": "batchnlp_row_error", "message": error or "no answer"}}
    cut = error is not None and error.startswith("cut:")
    body = {"id": f"chatcmpl-{key}", "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": "length" if cut else "stop"}]}
    return {"id": f"batch_req_{key}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": key, "body": body}, "error": None}


def _model_name(model: dict[str, Any]) -> str:
    for key in ("id", "package", "path"):
        if model.get(key):
            name = str(model[key])
            return name if key != "path" else Path(name).name
    return "batchnlp"


def _finished(state: Any) -> int:
    """When the output's last run finished (the completions' `created`), in seconds since the epoch."""
    from datetime import datetime

    runs = list(state.runs.values()) if isinstance(state.runs, dict) else list(state.runs)
    when = runs[-1].finished_at if runs else None
    return int(datetime.fromisoformat(when).timestamp()) if when else 0
