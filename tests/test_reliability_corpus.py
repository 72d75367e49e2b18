"""scripts/reliability_corpus.py on this checkout: every case of the adversarial corpus (bad
recipes, bad data, run directories that are not runs, endpoints that refuse; damaged checkpoints in
the slow tier) is handled cleanly, and no case has gone missing from the corpus. The counts here are
the README's reliability table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from test_scripts import run_script

FIXTURES = Path(__file__).parent / "fixtures" / "invalid"
FIFO = 1 if hasattr(os, "mkfifo") else 0

# Cases per class; a case dropped from the script (or one that stops being built) fails the test.
EXPECTED = {
    # every fixture in fixtures/invalid/, plus 15 built by the script (one of them a FIFO)
    "recipe": len(list(FIXTURES.glob("*.yaml"))) + 14 + FIFO,
    "data": 19 + 2 * FIFO,
    "run-dir": 10,
    "evaluate": 7,
    "checkpoint": 8,
}


def run_corpus(tmp_path: Path, classes: list[str]) -> dict[str, Any]:
    output = tmp_path / "corpus.json"
    args = ["--classes", ",".join(classes), "--require-clean", "--output", str(output)]
    out = run_script("reliability_corpus.py", *args, tmp_path=tmp_path)
    assert "| class" in out and "not clean:" not in out, out
    record: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    assert list(record["classes"]) == classes
    for cls in classes:
        names = [c["name"] for c in record["cases"] if c["cls"] == cls]
        assert len(names) == len(set(names)), f"{cls}: two cases share a name"
        assert record["classes"][cls] == {"cases": EXPECTED[cls], "clean": EXPECTED[cls], "not_clean": 0}, cls
    assert all(c["clean"] and c["reasons"] == [] for c in record["cases"])
    return record


def test_fast_classes_are_all_clean(tmp_path: Path) -> None:
    record = run_corpus(tmp_path, ["recipe", "data", "run-dir", "evaluate"])
    codes = {c["exit_code"] for c in record["cases"]}
    assert codes == {1, 2}  # user mistakes and endpoints that never answer


@pytest.mark.slow
def test_damaged_checkpoints_are_all_recovered(tmp_path: Path) -> None:
    record = run_corpus(tmp_path, ["checkpoint"])
    assert sorted(c["exit_code"] for c in record["cases"]) == [0] * 7 + [1]
