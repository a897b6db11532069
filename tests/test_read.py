"""Reading input: formats, the shard plan, and bad input failing with the file and row."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchnlp.errors import InputError, SpecError
from batchnlp.read.plan import make_plan, read_shards
from batchnlp.spec import InputSpec


def spec(path, **kw) -> InputSpec:
    from batchnlp.spec import _parse_input

    return _parse_input({"path": str(path), "text_column": kw.pop("text_column", "text"), **kw})


def all_rows(plan, skip=frozenset()):
    """(shard key, texts) of every shard not skipped; a key is (file number, shard within the file)."""
    return [(shard.key, table.column("text").to_pylist()) for shard, table in read_shards(plan, set(skip))]


def write_csv(path, rows, header="id,text"):
    path.write_text(header + "\n" + "".join(f"{i},{t}\n" for i, t in rows))
    return path


def test_shards_do_not_span_files_and_keep_order(tmp_path):
    (tmp_path / "in").mkdir()
    write_csv(tmp_path / "in" / "b.csv", [(i, f"b{i}") for i in range(3)])
    write_csv(tmp_path / "in" / "a.csv", [(i, f"a{i}") for i in range(5)])
    (tmp_path / "in" / "_SUCCESS").write_text("")  # skipped, like Spark's marker files
    plan = make_plan(spec(tmp_path / "in", format="csv"), rows_per_shard=2)
    assert plan.total_rows == 8 and plan.shard_count == 5
    assert all_rows(plan) == [((0, 0), ["a0", "a1"]), ((0, 1), ["a2", "a3"]), ((0, 2), ["a4"]),
                              ((1, 0), ["b0", "b1"]), ((1, 1), ["b2"])]
    assert all_rows(plan, skip={(0, 0), (0, 1), (0, 2), (1, 1)}) == [((1, 0), ["b0", "b1"])]
    assert [s.part for s, _ in read_shards(plan, ())][3] == "part-00001-00000.parquet"


def test_glob_and_limit(tmp_path):
    for name in ("x1.jsonl", "x2.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps({"text": f"{name}-{i}"}) + "\n" for i in range(4)))
    plan = make_plan(spec(tmp_path / "x*.jsonl"), rows_per_shard=3, limit=6)
    assert plan.total_rows == 6
    assert all_rows(plan) == [((0, 0), ["x1.jsonl-0", "x1.jsonl-1", "x1.jsonl-2"]), ((0, 1), ["x1.jsonl-3"]),
                              ((1, 0), ["x2.jsonl-0", "x2.jsonl-1"])]


def test_large_file_streams_in_shards(tmp_path):
    texts = [f"row {i}" for i in range(20_000)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "big.parquet", row_group_size=3000)
    plan = make_plan(spec(tmp_path / "big.parquet"), rows_per_shard=7000)
    shards = list(read_shards(plan, set()))
    assert [t.num_rows for _, t in shards] == [7000, 7000, 6000]
    assert [r for _, t in shards for r in t.column("text").to_pylist()] == texts


@pytest.mark.parametrize("skip", [set(), {0}, {0, 1, 2}, {0, 1, 2, 5}, {3}, set(range(13))])
@pytest.mark.parametrize("limit", [None, 50])
def test_skipping_committed_shards_reads_the_same_rows(tmp_path, skip, limit):
    texts = [f"row {i}" for i in range(95)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "rg.parquet", row_group_size=10)
    write_csv(tmp_path / "rg.csv", list(enumerate(texts)))
    for name in ("rg.parquet", "rg.csv"):
        plan = make_plan(spec(tmp_path / name), rows_per_shard=7, limit=limit)
        kept = texts[:limit]
        expected = [((0, i), kept[i * 7:(i + 1) * 7]) for i in range(-(-len(kept) // 7)) if i not in skip]
        assert all_rows(plan, {(0, i) for i in skip}) == expected, name


def test_parquet_seeks_to_the_row_group_of_the_first_row(tmp_path):
    from batchnlp.read import files

    texts = [f"row {i}" for i in range(95)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "rg.parquet", row_group_size=10)
    _, before = files._parquet_from(spec(tmp_path / "rg.parquet"), str(tmp_path / "rg.parquet"), 37)
    assert before == 7  # three row groups (30 rows) never decoded, 7 rows of the fourth dropped
    rows = [r for b in files.iter_batches(spec(tmp_path / "rg.parquet"), tmp_path / "rg.parquet", 37)
            for r in b.column("text").to_pylist()]
    assert rows == texts[37:]


def test_hugging_face_save_to_disk_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(5)], "n": list(range(5))}).save_to_disk(
        str(tmp_path / "ds"))
    plan = make_plan(InputSpec(text_column="text", dataset=str(tmp_path / "ds")), rows_per_shard=2)
    assert all_rows(plan) == [((0, 0), ["t0", "t1"]), ((0, 1), ["t2", "t3"]), ((0, 2), ["t4"])]
    assert all_rows(plan, skip={(0, 0)}) == [((0, 1), ["t2", "t3"]), ((0, 2), ["t4"])]


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"input.path: .*nope.csv does not exist"):
        make_plan(spec(tmp_path / "nope.csv"), 10)


def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match=r"empty.csv: the file is empty"):
        make_plan(spec(tmp_path / "empty.csv"), 10)


def test_header_only_file(tmp_path):
    (tmp_path / "header.csv").write_text("id,text\n")
    with pytest.raises(InputError, match="has no rows"):
        make_plan(spec(tmp_path / "header.csv"), 10)


def test_missing_column_lists_the_columns(tmp_path):
    write_csv(tmp_path / "x.csv", [(1, "a")], header="id,body")
    with pytest.raises(SpecError) as info:
        make_plan(spec(tmp_path / "x.csv", text_column="review"), 10)
    assert str(info.value) == f'input.text_column: column "review" not found in {tmp_path / "x.csv"}; ' \
                              "columns are: id, body"


def test_non_text_column(tmp_path):
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(SpecError, match='input.text_column: column "text" .* holds int64, not text'):
        make_plan(spec(tmp_path / "n.parquet"), 10)


def test_malformed_csv_row_names_file_and_row(tmp_path):
    rows = [(i, f"text {i}") for i in range(5000)]
    path = write_csv(tmp_path / "bad.csv", rows)
    with open(path, "a") as f:
        f.write('5000,"an, extra",column\n')
    with pytest.raises(InputError) as info:
        make_plan(spec(path), 100)
    message = str(info.value)
    assert message.startswith(f"{path}: CSV parse error: Row #5002: Expected 2 columns, got 3")
    assert "fix or quote that row" in message


def test_non_utf8_names_file_and_row_and_the_fix(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("id,text\n1,fine\n2,caf\xe9 cr\xe8me\n".encode("latin-1"))
    with pytest.raises(InputError) as info:
        make_plan(spec(path), 10)
    assert "Row #3" in str(info.value) and "input.encoding" in str(info.value)
    plan = make_plan(spec(path, encoding="latin-1"), 10)
    assert all_rows(plan) == [((0, 0), ["fine", "café crème"])]


def test_malformed_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(InputError, match=r"bad.jsonl: JSON parse error"):
        make_plan(spec(path), 10)


def test_hub_dataset_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputError, match="input.dataset: cannot open hub dataset 'org/no-such-corpus' at "
                                         "revision 'v1'.*save_to_disk"):
        make_plan(InputSpec(text_column="text", dataset="org/no-such-corpus", revision="v1", split="test"), 10)


def test_an_object_rewritten_in_the_same_second_with_the_same_size_is_read_again():
    """S3 keeps LastModified to the second: its ETag tells a same-size rewrite apart."""
    from batchnlp.read.source import Entry, Unit

    recorded = Unit("s3://b/a.csv", 3, size=10, mtime_ns=1_000_000_000, content_hash="x", key=0, version="etag-1")
    assert Entry("s3://b/a.csv", 10, 1_000_000_000, "etag-1").same_as(recorded)
    assert not Entry("s3://b/a.csv", 10, 1_000_000_000, "etag-2").same_as(recorded)
    assert not Entry("s3://b/a.csv", 10, None).same_as(recorded.__class__("d", 1))  # a dataset: no time to trust
