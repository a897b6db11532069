"""Chat-shaped prompts, and the OpenAI Batch API's files: requests in (input.format: openai-batch),
results out (batchnlp export --format openai-batch)."""

import json
import warnings

from helpers import invoke, read_output, write_job

TEXTS = ["the battery of this phone lasts all day", "a good movie with great acting", "das haus ist wunderbar",
         "where is the capital of france?", "the quick brown fox", "fine"]


def request(i: int) -> dict:
    return {"custom_id": f"request-{(i * 7919) % 1000:04d}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "max_tokens": 50,
                     "messages": [{"role": "system", "content": "You label reviews."},
                                  {"role": "user", "content": f"{TEXTS[i % len(TEXTS)]} {i}"}],
                     "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}}


def test_a_thousand_requests_round_trip_by_custom_id(tmp_path, causal_dir):
    requests = [request(i) for i in range(1000)]
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    job = write_job(tmp_path, input={"path": str(tmp_path / "batch.jsonl"), "format": "openai-batch"},
                    task={"name": "text-generation", "chat_template": True, "max_new_tokens": 2},
                    model={"path": str(causal_dir)}, output={"path": str(tmp_path / "out"), "rows_per_shard": 250})
    assert invoke("validate", job).exit_code == 0
    assert invoke("run", job, "-q").exit_code == 0
    table = read_output(tmp_path / "out")
    assert table.column("custom_id").to_pylist() == [r["custom_id"] for r in requests]
    messages = table.column("messages").to_pylist()
    assert messages[3] == requests[3]["body"]["messages"]  # the input columns kept, as read
    result = invoke("export", tmp_path / "out", "--format", "openai-batch", "--to", tmp_path / "results.jsonl")
    assert result.exit_code == 0 and "1000 lines" in result.output
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [r["custom_id"] for r in requests]
    texts = table.column("generated_text").to_pylist()
    assert all(line["error"] is None and line["response"]["status_code"] == 200 for line in lines)
    assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in lines] == texts
    assert len({line["id"] for line in lines}) == 1000
    again = invoke("export", tmp_path / "out", "--format", "openai-batch")
    assert again.output.splitlines() == (tmp_path / "results.jsonl").read_text().splitlines()  # the same bytes


def test_messages_column_is_the_chat_prompt(tmp_path, causal_dir):
    """A column of chat messages is the prompt, as transformers' pipeline takes a chat: the same
    greedy reply; the system prompt goes first only where the messages have none."""
    from transformers import pipeline

    chats = [[{"role": "user", "content": "the battery of"}],
             [{"role": "system", "content": "be brief"}, {"role": "user", "content": "das haus"},
              {"role": "assistant", "content": "ist"}, {"role": "user", "content": "a good movie"}]]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"chat": c}) + "\n" for c in chats))
    job = write_job(tmp_path, input={"path": str(tmp_path / "chats.jsonl"), "text_column": "chat"},
                    task={"name": "text-generation", "chat_template": True, "max_new_tokens": 6,
                          "system_prompt": "you label"}, model={"path": str(causal_dir)})
    assert invoke("run", job, "-q").exit_code == 0
    got = read_output(tmp_path / "out").column("generated_text").to_pylist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = pipeline("text-generation", model=str(causal_dir), device="cpu")
    expected = [[{"role": "system", "content": "you label"}, *chats[0]], chats[1]]
    for chat, text in zip(expected, got):
        assert pipe(chat, max_new_tokens=6, do_sample=False)[0]["generated_text"][-1]["content"] == text

    # A task that takes text refuses the column before anything runs.
    job = write_job(tmp_path, input={"path": str(tmp_path / "chats.jsonl"), "text_column": "chat"},
                    task={"name": "embeddings"}, model={"path": str(causal_dir)}, name="embed.yaml")
    result = invoke("validate", job)
    assert result.exit_code == 2 and 'input.text_column: column "chat"' in result.output
    assert "holds chat messages; this task takes text" in result.output
