"""Evaluating delta-rs (`pip install deltalake`, not a dependency) as the output's log (issue 16),
by hand, not in CI: the cost of an append commit as the table grows, and what readers that know
nothing of Delta (a plain Parquet reader of the folder, `datasets.load_dataset(data_dir=...)`) see
after a delete.

    python benchmarks/deltalake_eval.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import pyarrow as pa
import pyarrow.dataset as ds


def part(unit: int, rows: int = 5) -> pa.Table:
    return pa.table({"id": [f"{unit}-{i}" for i in range(rows)], "unit": [unit] * rows, "label": ["POS"] * rows,
                     "score": [0.5] * rows})


def timed(what: str, function) -> None:
    began = time.perf_counter()
    function()
    print(f"{what}: {(time.perf_counter() - began) * 1e3:.0f} ms")


def main() -> None:
    from deltalake import DeltaTable, write_deltalake

    table = tempfile.mkdtemp()
    seconds = []
    for unit in range(1200):
        began = time.perf_counter()
        write_deltalake(table, part(unit), mode="append")
        seconds.append(time.perf_counter() - began)
    for a, b in [(0, 100), (500, 600), (1100, 1200)]:
        print(f"append commits {a}-{b}: median {statistics.median(seconds[a:b]) * 1e3:.1f} ms, "
              f"max {max(seconds[a:b]) * 1e3:.1f} ms")
    timed("open the table at 1200 commits", lambda: DeltaTable(table))
    timed("delete one unit's rows", lambda: DeltaTable(table).delete("unit = 3"))
    print(f"rows via Delta: {DeltaTable(table).to_pyarrow_table().num_rows}; rows via a plain Parquet reader of the "
          f"folder: {ds.dataset(table, format='parquet').to_table().num_rows}")
    print("files in _delta_log:", len(os.listdir(os.path.join(table, "_delta_log"))))
    try:
        from datasets import load_dataset

        print("datasets.load_dataset(data_dir) rows:", load_dataset("parquet", data_dir=table, split="train").num_rows)
    except Exception as e:  # noqa: BLE001 - what a reader sees is the finding
        print("datasets.load_dataset(data_dir) failed:", type(e).__name__, str(e)[:160])


if __name__ == "__main__":
    main()
