"""Smoke test of the benchmark suite: ``benchmarks/run.py --quick --plot`` at tiny sizes, in-process.

It checks the product's shape, never its speed: every component present in the checkout gives a
table whose reference columns hold figures, nothing fails, and bench.json, bench.md and the plots
are written. Timings are printed by the suite, not asserted.
"""

from __future__ import annotations

import json
import os

from benchmarks import run


def test_run_quick_writes_tables_with_references(tmp_path, capsys):
    result = run.main(["--quick", "--plot", "--out", str(tmp_path)])
    printed = capsys.readouterr().out

    assert not result["failed"], result["failed"]
    assert result["tables"], "no component ran"
    names = {t["name"] for t in result["tables"]}
    skipped = {s["component"] for s in result["skipped"]}
    assert names | skipped == set(run.COMPONENTS)
    assert "train_step" in names  # this issue's own benchmark is always there
    for table in result["tables"]:
        keys = [k for k, _ in table["columns"]]
        assert table["rows"], table["name"]
        assert table["reference"], f"{table['name']}: no reference column"
        for ref in table["reference"]:
            assert ref in keys, f"{table['name']}: reference column {ref!r} not in {keys}"
            assert any(r.get(ref) is not None for r in table["rows"]), f"{table['name']}: {ref} empty"
        assert table["title"] in printed

    # Without NVML the run says so in one line and carries on.
    assert "NVML" in printed
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [t["name"] for t in saved["tables"]] == [t["name"] for t in result["tables"]]
    assert saved["machine"]["date_utc"] and saved["peaks"]["matmul_tflops"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert all(t["title"] in md for t in result["tables"])
    for loss in {"nt_xent", "distill_ce"} & names:
        assert os.path.getsize(tmp_path / f"{loss}.png") > 0
