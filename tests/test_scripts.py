"""Every script in scripts/ runs, in its smallest setting, so none of them rots between the times
someone needs it: the benchmarks on the tiny model for a step or two (each still prints its table
and writes JSON with a ratio against a baseline measured in the same run), the generators against
temporary folders, the flaky endpoint against a few requests, acceptance.py's --help."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
PACKAGED_SCHEMA = ROOT / "src" / "lora_recipes" / "recipe" / "recipe.schema.json"
QUICKSTART_DATA = ROOT / "recipes" / "data" / "quickstart"

# Script -> the test(s) below that run it. A new script without an entry fails the first test.
SMOKE_TESTS = {
    "acceptance.py": ["test_acceptance_help_and_report_only"],
    "bench_data.py": ["test_bench_data"],
    "bench_eval.py": ["test_bench_eval"],
    "bench_fleet.py": ["test_fleet.py::test_bench_fleet_tiny"],  # beside the other fleet tests
    "bench_gpu.py": ["test_bench_gpu_code_path_on_the_cpu_twice_in_one_workdir"],
    "bench_train.py": ["test_bench_train"],
    "bench_validate.py": ["test_bench_validate"],
    "flaky_endpoint.py": ["test_flaky_endpoint_replays_answers_and_fails_in_turn"],
    "gen_recipe_reference.py": ["test_gen_recipe_reference_writes_and_checks_both_outputs"],
    "gpu_check.py": ["test_gpu_check_on_the_cpu_runs_every_check_but_the_cuda_ones"],
    "make_quickstart_data.py": ["test_make_quickstart_data_writes_the_shipped_files"],
    "reliability_corpus.py": ["test_reliability_corpus.py::test_fast_classes_are_all_clean"],  # its own file
}


def run_script(name: str, *args: str, tmp_path: Path, timeout: float = 600) -> str:
    """`python scripts/NAME ARGS`; temporary folders it makes go under tmp_path. Returns stdout."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{name} {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def benchmark_record(path: Path) -> dict[str, Any]:
    """The JSON a benchmark wrote: a positive ratio against a baseline measured in the same run."""
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(record["ratio"], float) and record["ratio"] > 0, record
    assert record["baseline"], record
    return record


def _test_exists(name: str) -> bool:
    """A test of this file by name, or `test_other.py::name` in another test file."""
    if "::" not in name:
        return name in globals()
    file, test = name.split("::")
    return re.search(rf"^def {re.escape(test)}\(", (Path(__file__).parent / file).read_text(), re.M) is not None


def test_every_script_is_type_checked_and_smoke_tested() -> None:
    scripts = sorted(p.name for p in SCRIPTS.glob("*.py"))
    assert scripts == sorted(SMOKE_TESTS), "add the new script's smoke test to SMOKE_TESTS (or drop the old entry)"
    assert [t for tests in SMOKE_TESTS.values() for t in tests if not _test_exists(t)] == []
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'\[tool\.mypy\][^\[]*\nfiles = \[[^\]]*"scripts"', pyproject), "mypy must check scripts/"


def test_acceptance_help_and_report_only(tmp_path: Path) -> None:
    help_text = run_script("acceptance.py", "--help", tmp_path=tmp_path)
    assert "--only" in help_text and "--report-only" in help_text
    # No runs in --work: nothing to report, an empty results file, and no training.
    out = run_script(
        "acceptance.py", "--report-only", "--work", str(tmp_path / "work"), "--json", str(tmp_path / "a.json"),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert "wrote" in out and json.loads((tmp_path / "a.json").read_text()) == []


def test_make_quickstart_data_writes_the_shipped_files(tmp_path: Path) -> None:
    out = tmp_path / "quickstart"
    run_script("make_quickstart_data.py", "--output", str(out), tmp_path=tmp_path)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    for name in written:
        assert (out / name).read_bytes() == (QUICKSTART_DATA / name).read_bytes(), name
    run_script("make_quickstart_data.py", "--check", "--output", str(out), tmp_path=tmp_path)
    (out / "test.jsonl").write_text("{}\n")
    stale = subprocess.run(
        [sys.executable, str(SCRIPTS / "make_quickstart_data.py"), "--check", "--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert stale.returncode == 1 and "test" in stale.stderr


def test_gen_recipe_reference_writes_and_checks_both_outputs(tmp_path: Path) -> None:
    assert "up to date" in run_script("gen_recipe_reference.py", "--check", tmp_path=tmp_path)  # the repository
    reference, copy = tmp_path / "reference.md", tmp_path / "schema.json"
    args = ["--schema", str(PACKAGED_SCHEMA), "--output", str(reference), "--schema-copy", str(copy)]

    def check() -> int:
        command = [sys.executable, str(SCRIPTS / "gen_recipe_reference.py"), *args, "--check"]
        return subprocess.run(command, capture_output=True).returncode

    assert check() == 1  # neither exists
    run_script("gen_recipe_reference.py", *args, tmp_path=tmp_path)
    assert check() == 0
    assert copy.read_bytes() == PACKAGED_SCHEMA.read_bytes()
    assert reference.read_bytes() == (ROOT / "docs" / "recipe-reference.md").read_bytes()

    copy.write_bytes(PACKAGED_SCHEMA.read_bytes() + b"\n")  # one byte off
    assert check() == 1
    copy.unlink()
    copy.symlink_to(PACKAGED_SCHEMA)  # the same bytes, but a link is not a generated file
    assert check() == 1
    run_script("gen_recipe_reference.py", *args, tmp_path=tmp_path)
    assert not copy.is_symlink() and copy.read_bytes() == PACKAGED_SCHEMA.read_bytes()
    assert check() == 0


def test_flaky_endpoint_replays_answers_and_fails_in_turn(tmp_path: Path) -> None:
    answers = tmp_path / "predictions.jsonl"
    answers.write_text("".join(json.dumps({"prompt": f"q{i}", "prediction": f"a{i}"}) + "\n" for i in range(3)))
    command = [sys.executable, str(SCRIPTS / "flaky_endpoint.py"), "--answers", str(answers)]
    server = subprocess.Popen(
        [*command, "--fail-every", "2", "--slow", "0.05", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        match = re.search(r"serving 3 answers at (http://127\.0\.0\.1:\d+/v1)", first)
        assert match, first + (server.stderr.read() if server.poll() is not None and server.stderr else "")
        url = match[1]

        def post(path: str, body: dict[str, Any]) -> tuple[int, bytes]:
            request = urllib.request.Request(
                url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as error:
                return error.code, error.read()

        statuses = []
        for i in range(8):  # requests 2, 4, 6, 8 fail: 500, 429, timeout (slow, then answered), malformed
            chat = i % 2 == 1
            body = {"messages": [{"role": "user", "content": "q1"}]} if chat else {"prompt": "q1"}
            status, data = post("/chat/completions" if chat else "/completions", body)
            statuses.append(status)
            if i in (0, 2, 4):  # answered
                choice = json.loads(data)["choices"][0]
                assert (choice["message"]["content"] if chat else choice["text"]) == " a1"
        assert statuses == [200, 500, 200, 429, 200, 200, 200, 200]
        assert json.loads(post("/completions", {"prompt": "unknown"})[1])["choices"][0]["text"] == " "
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "requests: 429 1, 500 1, answered 5, malformed 1, timeout 1" in out


def test_bench_validate(tmp_path: Path) -> None:
    out = run_script("bench_validate.py", "--repeats", "1", "--json", str(tmp_path / "v.json"), tmp_path=tmp_path)
    assert "validate 30 recipes" in out and "x floor" in out
    assert benchmark_record(tmp_path / "v.json")["validate_s"] > 0


@pytest.mark.slow
def test_bench_data(tmp_path: Path) -> None:
    args = ["--rows", "300", "--repeats", "1", "--tokenizer", "tiny", "--synthetic", "--json", str(tmp_path / "d.json")]
    out = run_script("bench_data.py", *args, tmp_path=tmp_path)
    assert "pipeline (data/tokens.py)" in out and "baseline (datasets.map x2)" in out
    record = benchmark_record(tmp_path / "d.json")
    assert record["identical_token_ids"] is True and record["rows"] == 300


@pytest.mark.slow
def test_bench_eval(tmp_path: Path) -> None:
    args = ["--model", "tiny", "--synthetic", "--examples", "4", "--max-new-tokens", "2", "--batch-size", "2"]
    out = run_script("bench_eval.py", *args, "--json", str(tmp_path / "e.json"), tmp_path=tmp_path)
    assert "evaluate (batched)" in out and "one-at-a-time generate()" in out
    record = benchmark_record(tmp_path / "e.json")
    assert record["examples"] == 4 and record["identical_outputs"] == 4


@pytest.mark.slow
def test_bench_train(tmp_path: Path) -> None:
    args = ["--model", "tiny", "--synthetic", "--rows", "48", "--steps", "1", "--batch-size", "2"]
    out = run_script("bench_train.py", *args, "--output", str(tmp_path / "t.json"), tmp_path=tmp_path)
    assert all(name in out for name in ("hf-trainer", "lora-recipes", "hf-trainer-grouped", "useful tok/s"))
    record = benchmark_record(tmp_path / "t.json")
    assert record["steps"] == 1 and record["train_rows"] <= 48
    assert all(r["steps"] == 1 for r in record["results"].values())


@pytest.mark.slow
def test_bench_gpu_code_path_on_the_cpu_twice_in_one_workdir(tmp_path: Path) -> None:
    """--device cpu --tiny: the GPU benchmark's code path at toy width; run again with the same
    --workdir, which reuses the model and retrains both sides into their folders."""
    work = tmp_path / "work"
    args = ["--device", "cpu", "--tiny", "--layers", "1", "--steps", "2", "--warmup", "0", "--batch-size", "2"]
    args += ["--rows", "16", "--max-length", "48", "--workdir", str(work)]
    for attempt in ("first", "again"):
        out = run_script("bench_gpu.py", *args, "--output", str(tmp_path / f"{attempt}.json"), tmp_path=tmp_path)
        assert "hf-trainer" in out and "lora-recipes" in out and "peak VRAM" in out
        record = benchmark_record(tmp_path / f"{attempt}.json")
        assert record["shape"]["hidden_size"] == 64
        assert all(r["steps"] == 2 for r in record["results"].values())
        for r in record["results"].values():  # peaks beside the estimate; no GPU peaks on a CPU
            assert r["peak_reserved_bytes"] is None and r["estimate"]["peak_memory_bytes"] > 0
    assert len(list(work.glob("mistral-7b-random-*"))) == 1  # built once
    # gpu_check.py reads this JSON into its table row on a GPU; here the same function reads the CPU's.
    line = load_script("gpu_check").describe_bench(record)
    assert "HF + PEFT" in line and "estimate" in line


def load_script(name: str) -> Any:
    """A script in scripts/ as a module, without running its main()."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_on_the_cpu_runs_every_check_but_the_cuda_ones(tmp_path: Path) -> None:
    """scripts/gpu_check.py, the one GPU check (`make gpu-check`), on the CPU with few steps: its
    CUDA steps are marked skipped, every other check runs the code a GPU run runs and passes."""
    args = ["--device", "cpu", "--steps", "4", "--stop-at", "2", "--workdir", str(tmp_path / "work")]
    out = run_script("gpu_check.py", *args, "--json", str(tmp_path / "check.json"), tmp_path=tmp_path)
    assert "| check | result | detail |" in out and "0 failed" in out
    rows = {r["check"]: r for r in json.loads((tmp_path / "check.json").read_text())["rows"]}
    status = {name: r["status"] for name, r in rows.items()}
    assert [n for n, s in status.items() if s == "FAIL"] == []
    skipped = {n for n, s in status.items() if s == "skipped"}
    assert all(r["detail"].startswith("no CUDA GPU") for n, r in rows.items() if n in skipped), rows
    assert {n.split(" (")[0].split(":")[0] for n in skipped} == {
        "bf16 answers and precision",
        "training with the paged optimizer",
        "paged optimizers page tensors of >= 100,000 elements only",
        "fp16 and loss scaling, 4-bit LoRA",
        "fp16 and loss scaling, full fine-tuning",
        "bench_gpu, Mistral-7B shape",
    }
    ran = {n for n, s in status.items() if s == "ok"}
    assert {"train 4 steps (lora-recipes train)", "stop at step 2 and --resume: same losses",
            "gradient norm above zero every step", "logits mask: the same loss and gradient as full logits",
            "evaluate (generate mode): batch size 1 = batch size 16",
            "evaluate (rank mode): batch size 1 = batch size 16"} <= ran  # fmt: skip


def test_gpu_check_skips_a_bench_size_whose_build_does_not_fit(tmp_path: Path) -> None:
    """Building the random model takes every weight in bfloat16 on the GPU: 32 layers of the
    Mistral-7B shape at batch 1 fit a T4's 4-bit training estimate but not the build, so they are
    skipped with the reason; once the model folder is built, only training counts. An L4 fits both."""
    check = load_script("gpu_check")
    t4, l4 = 15_835_660_288, 23_580_639_232  # torch's total_memory of a 16 GB T4 and a 24 GB L4
    why = check.memory_shortfall(tmp_path, 32, 1, t4)
    assert why is not None and "building in bfloat16 14.5 GiB" in why and "4-bit training 9.3 GiB" in why
    assert check.memory_shortfall(tmp_path, 8, 1, t4) is None
    assert check.memory_shortfall(tmp_path, 32, 1, l4) is None
    assert "4-bit training 40.6 GiB" in check.memory_shortfall(tmp_path, 32, 8, l4)
    folder = load_script("bench_gpu").model_folder(tmp_path, 32)
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert check.memory_shortfall(tmp_path, 32, 1, t4) is None


def test_gpu_check_compares_series_with_skipped_steps() -> None:
    """Resume equality compares gradient norms too; a step fp16 loss scaling skipped has none (null)."""
    difference = load_script("gpu_check").max_relative_difference
    assert difference([1.0, None, 2.0], [1.0, None, 2.0]) == 0.0
    assert difference([1.0, None], [1.0, 3.0]) == float("inf")
    assert difference([1.0], [1.0, 1.0]) == float("inf")
    assert difference([1.0, 2.0000002], [1.0, 2.0]) == pytest.approx(1e-7)
