"""`validate` and `plan --no-data` must not import heavy libraries (they cost seconds to import)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "numpy", "matplotlib"]

PROBE = """
import json, sys
from lora_recipes.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy})))
"""


def loaded_heavy_modules(*args: str) -> list[str]:
    code = PROBE.format(heavy=set(HEAVY))
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, cwd=ROOT)
    result: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_validate_imports_nothing_heavy() -> None:
    assert loaded_heavy_modules("validate", *map(str, sorted((ROOT / "recipes").glob("*.yaml")))) == []


def test_plan_without_data_imports_nothing_heavy() -> None:
    assert loaded_heavy_modules("plan", str(ROOT / "recipes" / "jigsaw.yaml"), "--no-data", "--format", "json") == []


def test_probe_detects_heavy_imports() -> None:
    """The probe itself must be able to fail: importing models.py pulls in torch."""
    code = PROBE.format(heavy=set(HEAVY)).replace(
        "from lora_recipes.cli import app", "from lora_recipes.cli import app\nimport lora_recipes.model.loading"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "--version"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "torch" in json.loads(out.stdout.strip().splitlines()[-1])
