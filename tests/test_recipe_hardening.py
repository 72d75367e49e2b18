"""A recipe loader that cannot be made to crash, hang or run out of memory by what it is given.

Every user mistake is a `RecipeInvalid` (each issue with FILE:LINE:COL) or a `UserError` naming the
file: never another exception. The limits (`MAX_RECIPE_BYTES`, `MAX_DEPTH`, `MAX_NODES`,
`MAX_INTEGER`) are checked here, and a property-based test feeds the loader random and mutated
recipes and `--set` options.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lora_recipes.cli import app
from lora_recipes.errors import RecipeInvalid, UserError
from lora_recipes.recipe import loader
from lora_recipes.recipe.checks import MAX_INTEGER
from lora_recipes.recipe.loader import MAX_RECIPE_BYTES, LoadedRecipe, load_recipe
from lora_recipes.recipe.schema import load_schema
from lora_recipes.recipe.yamlio import MAX_DEPTH, parse_yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))

MINIMAL = """\
version: 1
base_model: mistralai/Mistral-7B-v0.1
prompt: {template: "Review: {sentence}\\nSentiment:"}
output: {column: label, type: category, labels: [negative, positive]}
data: {dataset: ./data}
"""

runner = CliRunner()


def write(folder: Path, text: str | bytes, name: str = "r.yaml") -> Path:
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def issues_of(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(path, overrides)
    return [str(issue) for issue in caught.value.issues]


# --- 1. NaN and infinity -------------------------------------------------------------------------

FLOAT_KEYS = [
    "trainer.learning_rate",
    "trainer.epochs",
    "trainer.learning_rate_scheduler.warmup_fraction",
    "trainer.optimizer.eps",
    "trainer.optimizer.weight_decay",
    "trainer.gradient_clipping.clipglobalnorm",
    "adapter.alpha",
    "adapter.dropout",
    "generation.temperature",
    "generation.top_p",
    "quantization.llm_int8_threshold",
    "data.split.validation_fraction",
    "evaluation.endpoints.timeout",
    "cost.price_per_hour_usd",
]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize(
    ("value", "shown"), [(".nan", ".nan"), (".inf", ".inf"), ("-.inf", "-.inf"), ("1e999", ".inf")]
)
def test_non_finite_numbers_are_refused_for_every_float(tmp_path: Path, key: str, value: str, shown: str) -> None:
    [issue] = issues_of(write(tmp_path, MINIMAL), [f"{key}={value}"])
    assert issue.startswith(f"--set:1:1: {key}: {shown} is not a finite number (NaN and infinity are not allowed")


def test_non_finite_betas_are_refused(tmp_path: Path) -> None:
    assert issues_of(write(tmp_path, MINIMAL), ["trainer.optimizer.betas=[0.9, .nan]"]) == [
        "--set:1:1: trainer.optimizer.betas[1]: .nan is not a finite number (NaN and infinity are not allowed)"
    ]


def test_non_finite_number_in_a_file_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "trainer: {learning_rate: .nan}\nadapter:\n  alpha: .inf\n")
    assert issues_of(path) == [
        f"{path}:6:26: trainer.learning_rate: .nan is not a finite number"
        " (NaN and infinity are not allowed; e.g. 0.0002)",
        f"{path}:8:10: adapter.alpha: .inf is not a finite number (NaN and infinity are not allowed; e.g. 16)",
    ]


def test_huge_integers_are_refused_and_64_bits_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    assert load_recipe(path, [f"seed={MAX_INTEGER}"]).recipe.seed == MAX_INTEGER
    [issue] = issues_of(path, [f"adapter.alpha={MAX_INTEGER + 1}"])  # float(10**400) would overflow
    assert issue.startswith("--set:1:1: adapter.alpha: a 19-digit integer is too large")


def test_plan_with_infinite_epochs_is_a_user_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", str(write(tmp_path, MINIMAL)), "--no-data", "--set", "trainer.epochs=.inf"])
    assert result.exit_code == 2, result.output
    assert "trainer.epochs: .inf is not a finite number" in result.output
    assert not isinstance(result.exception, OverflowError | AssertionError)


# --- 2. Parser limits ------------------------------------------------------------------------------


def block_nesting(levels: int) -> str:
    return "".join("  " * i + "a:\n" for i in range(levels)) + "  " * levels + "1\n"


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 500, 1000])
def test_deep_block_nesting_is_refused_with_its_line(tmp_path: Path, levels: int) -> None:
    path = write(tmp_path, block_nesting(levels))
    assert issues_of(path) == [
        f"{path}:{MAX_DEPTH + 1}:{2 * MAX_DEPTH + 1}: nested more than {MAX_DEPTH} levels deep"
        " (a recipe is a few levels deep: is this the right file?)"
    ]


@pytest.mark.parametrize(("levels", "col"), [(MAX_DEPTH + 1, 3 + MAX_DEPTH), (900, 3 + MAX_DEPTH), (100_000, 1003)])
def test_deep_flow_nesting_is_refused_with_its_line(tmp_path: Path, levels: int, col: int) -> None:
    # Past 1000 open brackets LibYAML's scanner, reading ahead, stops first: the same message.
    path = write(tmp_path, "x: " + "[" * levels + "]" * levels + "\n")
    [issue] = issues_of(path)
    assert issue.startswith(f"{path}:1:{col}: nested more than {MAX_DEPTH} levels deep (a recipe is a few levels")


def test_nesting_up_to_the_limit_is_read() -> None:
    doc = parse_yaml(block_nesting(MAX_DEPTH - 1), "r.yaml")
    depth, node = 0, doc.data
    while isinstance(node, dict):
        depth, node = depth + 1, node["a"]
    assert (depth, node) == (MAX_DEPTH - 1, 1)


def test_aliases_cannot_nest_past_the_limit(tmp_path: Path) -> None:
    # Each anchor is 30 levels deep and holds the one before: 20 of them expand to 600 levels
    # (and only about 600 values, far below the alias-bomb limit).
    lines = ["a0: &a0 " + "[" * 30 + "1" + "]" * 30]
    for i in range(1, 20):
        lines.append(f"a{i}: &a{i} " + "[" * 30 + f"*a{i - 1}" + "]" * 30)
    [issue] = issues_of(write(tmp_path, "\n".join(lines) + "\n"))
    assert f"nested more than {MAX_DEPTH} levels deep (aliases nest their values this deep" in issue


def test_a_recipe_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "#" * (MAX_RECIPE_BYTES - len(MINIMAL)) + "\n")
    with pytest.raises(UserError) as caught:
        load_recipe(path)
    assert str(caught.value).startswith(f"{path}: larger than 1,048,576 bytes (1 MiB)")
    load_recipe(write(tmp_path, MINIMAL + "#" * (MAX_RECIPE_BYTES - len(MINIMAL) - 1) + "\n"))  # at the limit


def test_a_huge_file_is_read_no_further_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "sparse.yaml"
    with path.open("wb") as f:
        f.truncate(256 * 1024 * 1024)  # sparse: no disk used, 256 MiB if read whole
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="larger than 1,048,576 bytes"):
            load_recipe(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def run_briefly(call: Callable[[], Any], seconds: float = 10) -> BaseException | None:
    """Run `call` in a daemon thread; fail if it is still running after `seconds`."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s (blocked on a read?)"
    return outcome[0]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    error = run_briefly(lambda: load_recipe(fifo))
    assert isinstance(error, UserError)
    assert str(error) == f"{fifo}: is a named pipe, not a recipe file"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_is_refused_without_reading() -> None:
    error = run_briefly(lambda: load_recipe("/dev/zero"))
    assert isinstance(error, UserError)
    assert str(error) == "/dev/zero: is a character device, not a recipe file"


def test_a_file_replaced_by_a_pipe_after_the_first_look_is_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    real_open = os.open
    monkeypatch.setattr(loader.os, "open", lambda p, flags, *a: real_open(fifo, flags, *a))
    error = run_briefly(lambda: load_recipe(path))
    assert isinstance(error, UserError) and "is a named pipe" in str(error)


# --- 4. Unreadable recipes -------------------------------------------------------------------------


def unreadable_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    a_file = write(tmp_path, MINIMAL)
    return {
        "missing": (tmp_path / "nope.yaml", f"{tmp_path / 'nope.yaml'}: no such file"),
        "folder": (folder, f"{folder}: is a folder, not a recipe file"),
        "under a file": (a_file / "x.yaml", f"{a_file / 'x.yaml'}: cannot read the recipe: Not a directory"),
    }


@pytest.mark.parametrize("case", ["missing", "folder", "under a file"])
def test_unreadable_recipe_names_the_path_and_the_reason(tmp_path: Path, case: str) -> None:
    path, message = unreadable_cases(tmp_path)[case]
    with pytest.raises(UserError) as caught:
        load_recipe(path)
    assert str(caught.value) == message
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, OSError)


def test_permission_denied_names_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root a file cannot be made unreadable: make the open fail the way it would.
    path = write(tmp_path, MINIMAL)

    def denied(p: Any, *args: Any) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))

    monkeypatch.setattr(loader.os, "open", denied)
    with pytest.raises(UserError) as caught:
        load_recipe(path)
    assert str(caught.value) == f"{path}: cannot read the recipe: Permission denied"


def test_nul_byte_in_the_path_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot read the recipe: embedded null byte"):
        load_recipe("a\0b.yaml")


def test_non_utf8_recipe_through_the_cli(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.encode() + b"description: caf\xe9\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}:6:1: byte 0xe9 is not UTF-8 (save the file as UTF-8)" in result.output


def test_control_character_has_its_place(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "description: a\x00b\n")
    [issue] = issues_of(path)
    assert issue.startswith(f"{path}:6:15: the character U+0000 is not allowed in YAML")


def test_undecodable_command_line_bytes_are_a_recipe_error(tmp_path: Path) -> None:
    # Python hands bytes that are not UTF-8 in argv over as lone surrogates.
    [issue] = issues_of(write(tmp_path, MINIMAL), ["description=caf\udce9"])
    assert issue == "--set:1:16: the character U+DCE9 is not valid text (write the value as UTF-8)"


# --- 3. Every mistake at once ----------------------------------------------------------------------


def test_duplicate_key_and_refused_tag_hide_nothing(tmp_path: Path) -> None:
    text = MINIMAL.replace("data: {dataset: ./data}", "data: {dataset: ./data, evaluation_split: dev}")
    text += "description: !!python/name:os.system\ntrainer: {batch_size: 0}\ntrainer: {batch_size: 1}\n"
    path = write(tmp_path, text)
    assert [i.split(": ", 2)[1] for i in issues_of(path)] == [
        "data.evaluation_split",
        "description",
        "trainer.batch_size",
        "trainer",
    ]


def test_refused_value_brings_no_second_error(tmp_path: Path) -> None:
    # The tagged value is dropped: no "missing required key" or "expected text" about it.
    path = write(tmp_path, MINIMAL.replace("base_model: mistralai/Mistral-7B-v0.1", "base_model: !secret x"))
    assert issues_of(path) == [
        f"{path}:2:13: base_model: the tag !secret is not allowed (recipes hold plain values only: remove the tag)"
    ]


def test_refused_tag_in_an_override_is_reported_at_its_key(tmp_path: Path) -> None:
    assert issues_of(write(tmp_path, MINIMAL), ["adapter.r=!!python/object:os.system x", "adapter.alpha=0"]) == [
        "--set:1:11: adapter.r: the tag tag:yaml.org,2002:python/object:os.system is not allowed"
        " (it would construct a Python object) (recipes hold plain values only: remove the tag)",
        "--set:2:1: adapter.alpha: must be > 0, got 0 (e.g. 16)",
    ]


def test_override_syntax_error_hides_nothing_else(tmp_path: Path) -> None:
    paths = [i.split(": ", 2)[1] for i in issues_of(write(tmp_path, MINIMAL), ["adapter.r=[8", "adapter.alpha=0"])]
    assert paths == ["YAML syntax error", "adapter.alpha"]


def test_list_item_override_of_a_defaulted_list_is_one_error(tmp_path: Path) -> None:
    assert issues_of(write(tmp_path, MINIMAL), ["adapter.target_modules.0=k_proj"]) == [
        "--set:1:1: adapter.target_modules[0]: no such list item to override (set the whole list instead)"
    ]


def test_list_item_override_of_a_written_list_works(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "adapter: {target_modules: [q_proj, v_proj]}\n")
    loaded = load_recipe(path, ["adapter.target_modules.0=k_proj", "adapter.target_modules.1=o_proj"])
    assert loaded.recipe.adapter.target_modules == ("k_proj", "o_proj")


@pytest.mark.parametrize(
    ("value", "got"),
    [("[1]", "got a list"), ("{a: 1}", "got a mapping"), ("null", "got null"), ("true", "got true"),
     ("'8'", "got text '8'"), ("8.5", "got a number 8.5")],
)  # fmt: skip
def test_wrong_type_says_what_it_got_once(tmp_path: Path, value: str, got: str) -> None:
    assert issues_of(write(tmp_path, MINIMAL), [f"adapter.r={value}"]) == [
        f"--set:1:1: adapter.r: expected an integer, {got} (e.g. 8)"
    ]


# --- 5. `~` in paths -------------------------------------------------------------------------------


def test_home_is_expanded_in_path_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    path = write(tmp_path, MINIMAL.replace("./data", "~/data") + "output_directory: ~/runs\n")
    loaded = load_recipe(path)
    assert loaded.recipe.output_directory == str(home / "runs")
    assert loaded.resolved["output_directory"] == str(home / "runs")
    assert loaded.recipe.data.dataset == str(home / "data")
    assert loaded.local_path(("data", "dataset"), loaded.recipe.data.dataset) == home / "data"
    via_set = load_recipe(path, ["output_directory=~/elsewhere", "base_model=~/models/m"])
    assert via_set.recipe.output_directory == str(home / "elsewhere")
    assert via_set.recipe.base_model == str(home / "models" / "m")
    assert load_recipe(path, data_path="~/d").recipe.data.dataset == str(home / "d")


def test_only_a_leading_tilde_is_expanded(tmp_path: Path) -> None:
    loaded = load_recipe(write(tmp_path, MINIMAL + "output_directory: runs/~x\ndescription: ~/not/a/path\n"))
    assert loaded.recipe.output_directory == "runs/~x"
    assert loaded.recipe.description == "~/not/a/path"


def test_unknown_user_is_left_as_written(tmp_path: Path) -> None:
    loaded = load_recipe(write(tmp_path, MINIMAL + "output_directory: ~no-such-user-xyz/runs\n"))
    assert loaded.recipe.output_directory == "~no-such-user-xyz/runs"
    assert loaded.local_path(("base_model",), "~no-such-user-xyz/m") == tmp_path / "~no-such-user-xyz/m"


# --- 6. Property: random and mutated recipes -------------------------------------------------------

SHIPPED = {path.name: path.read_text(encoding="utf-8") for path in RECIPES}


def key_paths(schema: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, sub in schema.get("properties", {}).items():
        out.append(prefix + name)
        out.extend(key_paths(sub, f"{prefix}{name}."))
    return out


KEYS = key_paths(load_schema())

SCALARS = [
    ".nan", ".inf", "-.inf", ".NaN", "1e999", "-1e999", "9" * 25, "-" + "9" * 25, "9" * 5000, "0x" + "f" * 40,
    "0", "-1", "1.5", "2e-4", "true", "no", "~", "null", "''", '""', "[]", "{}", "[1, 2]", "{a: 1}",
    "!!python/object/apply:os.system [x]", "!!binary aGk=", "!!int x", "!!float x", "!!bool yes", "!custom v",
    "&a [1]", "*a", "<<: *a", "[", "{", "'", "- x", "? x", "a: b: c", "\t", "%YAML 1.2", "---\n---",
    "\x00", "\ufeff", "q_proj", "category", "./data", "~/runs",
]  # fmt: skip

scalar_text = st.one_of(
    st.sampled_from(SCALARS),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: yaml.safe_dump(f).split("\n")[0]),
    st.text(max_size=30),
)


def mutate(text: str, rnd: random.Random, scalars: list[str]) -> str:
    """Delete, duplicate, retype or break lines of a recipe, or splice in random text."""
    lines = text.splitlines()
    for scalar in scalars:
        if not lines:
            lines = [scalar]
            continue
        i = rnd.randrange(len(lines))
        action = rnd.randrange(6)
        if action == 0:
            del lines[i]  # delete a key (or part of a list)
        elif action == 1:
            lines.insert(i, lines[i])  # duplicate a key
        elif action == 2 and ":" in lines[i]:
            head = lines[i].split(":", 1)[0]
            lines[i] = f"{head}: {scalar}"  # retype a value
        elif action == 3:
            lines[i] = lines[i][: rnd.randrange(len(lines[i]) + 1)] + scalar  # cut a line short
        elif action == 4:
            lines.insert(i, " " * rnd.randrange(8) + scalar)
        else:
            depth = rnd.randrange(1, 120)
            lines.insert(i, "deep: " + "[" * depth + scalar + "]" * depth)
    return "\n".join(lines) + "\n"


def assert_clean(path: Path, overrides: list[str]) -> LoadedRecipe | None:
    """The only outcomes: a recipe, or a recipe mistake with places, or a user error naming the file."""
    try:
        return load_recipe(path, overrides)
    except RecipeInvalid as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.location.file in (str(path), "--set"), issue
            assert issue.location.line >= 1 and issue.location.col >= 1, issue
            assert issue.message, issue
        return None
    except UserError as exc:
        assert str(exc).startswith(f"{path}: "), exc
        return None


override_keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k + ".0"), st.text(max_size=20))
overrides = st.lists(st.tuples(override_keys, scalar_text).map("=".join), max_size=4)

PROPERTY = settings(
    max_examples=50,
    deadline=2000,  # ms: every load, whatever it is given, is quick
    database=None,  # write nothing into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    load_recipe(RECIPES[0])  # compile the schema validator before the deadline applies
    return tmp_path_factory.mktemp("hardening")


@PROPERTY
@given(
    name=st.sampled_from(sorted(SHIPPED)),
    seed=st.integers(0, 2**32),
    scalars=st.lists(scalar_text, min_size=1, max_size=6),
    options=overrides,
)
def test_mutated_shipped_recipes_load_or_fail_cleanly(
    scratch: Path, name: str, seed: int, scalars: list[str], options: list[str]
) -> None:
    path = write(scratch, mutate(SHIPPED[name], random.Random(seed), scalars), name)
    assert_clean(path, options)


@PROPERTY
@given(name=st.sampled_from(sorted(SHIPPED)), options=overrides)
def test_random_overrides_load_or_fail_cleanly(scratch: Path, name: str, options: list[str]) -> None:
    path = write(scratch, SHIPPED[name], name)
    assert_clean(path, options)


@PROPERTY
@given(data=st.one_of(st.binary(max_size=2000), st.text(max_size=2000).map(str.encode)))
def test_random_bytes_load_or_fail_cleanly(scratch: Path, data: bytes) -> None:
    assert assert_clean(write(scratch, data, "random.yaml"), []) is None


@PROPERTY
@given(
    depth=st.integers(1, 3000),
    flow=st.booleans(),
    leaf=st.sampled_from(["1", ".nan", "[]", "{}", "&a x", "*a", "!!python/none ''"]),
)
def test_deep_nesting_loads_or_fails_cleanly(scratch: Path, depth: int, flow: bool, leaf: str) -> None:
    if flow:
        text = MINIMAL + "description: " + "[" * depth + leaf + "]" * depth + "\n"
    else:
        text = MINIMAL + "".join("  " * i + "a:\n" for i in range(depth)) + "  " * depth + leaf + "\n"
    assert assert_clean(write(scratch, text, "deep.yaml"), []) is None
