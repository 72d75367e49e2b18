"""The commands that serve every adapter of a fleet from one GPU, one base model per server:
vLLM (`--enable-lora --lora-modules name=path ... --max-lora-rank R --max-loras N`, R the
smallest value vLLM accepts that holds the largest adapter rank, N the adapter count), LoRAX
(one container; each adapter by its path as adapter_id), and one `evaluate --endpoint` line per
adapter that scores it as served, into the run's eval-vllm/ (the leaderboard reads it back as the
"served adapter" column).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_recipes.model.source import PACKAGE_PREFIX
from lora_recipes.recipe.serving import vllm_rank_flag

VLLM_URL = "http://localhost:8000/v1"
SERVED_EVAL_DIR = "eval-vllm"
LORAX_IMAGE = "ghcr.io/predibase/lorax:main"


@dataclass(frozen=True)
class ServedAdapter:
    name: str  # the name it is served under: the recipe's
    adapter: Path
    base_model: str  # what the server loads
    rank: int | None
    recipe: Path  # the run's recipe.resolved.yaml
    run_dir: Path


def server_base(recipe_base: str, adapter_base: str | None) -> str:
    """A server loads a hub id or a folder: a package: GGUF base is served from the folder its
    adapter names (the converted model)."""
    if recipe_base.startswith(PACKAGE_PREFIX) and adapter_base:
        return adapter_base
    return recipe_base


def _q(value: object) -> str:
    return shlex.quote(str(value))


def serving_commands(adapters: Sequence[ServedAdapter], runs: Path) -> dict[str, list[str]]:
    """{"vllm": [...], "lorax": [...], "evaluate": [...]}: shell lines, comments start with #."""
    out: dict[str, list[str]] = {"vllm": [], "lorax": [], "evaluate": []}
    bases: dict[str, list[ServedAdapter]] = {}
    for a in adapters:
        bases.setdefault(a.base_model, []).append(a)
    for base, group in bases.items():
        servable = [a for a in group if a.rank is None or vllm_rank_flag(a.rank) is not None]
        for a in group:
            if a not in servable:
                out["vllm"].append(f"# {a.name}: rank {a.rank} is above vLLM's largest --max-lora-rank (512)")
        if servable:
            ranks = [a.rank for a in servable if a.rank is not None]
            modules = " ".join(_q(f"{a.name}={a.adapter}") for a in servable)
            line = f"vllm serve {_q(base)} --enable-lora --lora-modules {modules}"
            if ranks:
                line += f" --max-lora-rank {vllm_rank_flag(max(ranks))}"
            out["vllm"].append(f"{line} --max-loras {len(servable)}")
        out["lorax"].append(
            f"docker run --gpus all --shm-size 1g -p 8080:80 -v {_q(runs)}:/runs {LORAX_IMAGE} --model-id {_q(base)}"
        )
        for a in group:
            inside = Path("/runs") / a.adapter.relative_to(runs) if a.adapter.is_relative_to(runs) else a.adapter
            out["lorax"].append(f"#   {a.name}: adapter_id {inside} (adapter_source local)")
        for a in servable:
            out["evaluate"].append(
                f"lora-recipes evaluate {_q(a.recipe)} --endpoint {VLLM_URL} --model {_q(a.name)} "
                f"--output {_q(a.run_dir / SERVED_EVAL_DIR)}"
            )
    return out
