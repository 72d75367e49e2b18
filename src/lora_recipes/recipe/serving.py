"""What adapter servers accept: vLLM's and LoRAX's limits as data, and one pure function,
`check_adapter`, that holds an adapter's settings against them.

The same function runs on a recipe before training (`recipe/rules.py`: errors through the rules
registry, warnings and notes as the recipe's notices, printed by `validate`) and on a saved adapter
(`lora-recipes check-adapter PATH` reads its adapter_config.json). Nothing here imports anything
heavy: plain data and functions over flat arguments.

Severity means the same everywhere:

- error: the server refuses the adapter whatever flags it is started with, or loads only part of
  it (LoRAX drops modules it does not know), so what is served is not what was trained and scored;
- warning: the server refuses the adapter with its default flags, and `flag` is the flag that
  makes it load (`--max-lora-rank 64`); or it loads it with a warning of its own;
- note: the server loads the adapter but runs it slower or pads it (more memory per adapter).

Only the servers in `targets` are checked (a recipe's `serving.targets`, default both); the
findings of a server left out are never reported.

Sources: vLLM's `PEFTHelper.validate_legal` (vllm/lora/peft_helper.py) and `LoRAConfig`
(vllm/config/lora.py: `max_lora_rank` defaults to 16 and is one of `VLLM_MAX_LORA_RANKS`);
LoRAX's supported target modules per architecture (docs/models/adapters/lora.md), its SGMV
padding and rank limit (lorax_server/utils/sgmv.py) and its base-model check
(lorax_server/utils/adapter.py).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

SERVERS = ("vllm", "lorax")
SERVER_NAMES = {"vllm": "vLLM", "lorax": "LoRAX"}
SEVERITIES = ("error", "warning", "note")

# vLLM (vllm/config/lora.py): --max-lora-rank takes one of these and defaults to 16.
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# modules_to_save vLLM accepts: only the heads of classification models.
VLLM_MODULES_TO_SAVE = frozenset({"classifier", "score"})

# LoRAX (lorax_server/utils/sgmv.py): SGMV pads a rank up to 8 (the minimum), else to the next
# multiple of 16; its fast kernels handle ranks up to 128, larger ones take a slower path.
LORAX_MIN_RANK = 8
LORAX_RANK_BLOCK = 16
LORAX_FAST_MAX_RANK = 128

# Every finding by code, with its severity (the tests hold each one to a case).
CODES: dict[str, str] = {
    "vllm.not_lora": "error",
    "vllm.rank_above_max": "error",
    "vllm.rank_above_default": "warning",
    "vllm.bias": "error",
    "vllm.lora_bias": "error",
    "vllm.dora": "error",
    "vllm.modules_to_save": "error",
    "vllm.unknown_modules": "error",
    "vllm.other_architecture": "error",
    "vllm.other_base": "warning",
    "lorax.not_lora": "error",
    "lorax.dropped_modules": "error",
    "lorax.rank_slow": "note",
    "lorax.rank_padded": "note",
    "lorax.other_architecture": "error",
    "lorax.other_base": "warning",
}

_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    """Target modules each server loads adapters on, for one architecture (a transformers
    `model_type`)."""

    vllm: tuple[str, ...]
    lorax: tuple[str, ...]


# Architectures whose module names are known; others skip the target-module checks. vLLM also
# takes LoRA on the embeddings of Llama and Mistral; LoRAX serves lm_head but not on Gemma.
FAMILIES: dict[str, Family] = {
    "llama": Family((*_LINEAR, "embed_tokens", "lm_head"), (*_LINEAR, "lm_head")),
    "mistral": Family((*_LINEAR, "embed_tokens", "lm_head"), (*_LINEAR, "lm_head")),
    "gemma": Family(_LINEAR, _LINEAR),
}

# Pieces of a model id (lower case) that name its architecture, checked in order: Mixtral first,
# since `mistralai/Mixtral-8x7B` holds "mistral" too and has other modules.
_ID_PARTS: tuple[tuple[str, str | None], ...] = (
    ("mixtral", None),
    ("mistral", "mistral"),
    ("zephyr", "mistral"),
    ("gemma", "gemma"),
    ("smollm", "llama"),
    ("llama", "llama"),
)

# Target modules that mean "every linear layer" to peft; it expands them to the names above.
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class Finding:
    """One thing a server would refuse, or do slower, with an adapter.

    `code` is stable (`vllm.rank_above_default`); `setting` is the adapter_config.json key it is
    about (r, bias, target_modules, ...); `fix` says what to change; `flag` is the server flag that
    makes a warning go away, when there is one."""

    code: str
    server: str
    severity: str
    setting: str
    message: str
    fix: str
    flag: str | None = None
    modules: tuple[str, ...] = ()  # the target modules it is about, when it is about some

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["modules"] = list(self.modules)
        return out


def family_of(model: str | None, model_type: str | None = None) -> str | None:
    """The architecture family (a key of `FAMILIES`) of a base model: its config.json
    `model_type` when known, else read from its hub id or file name; None when unknown."""
    if model_type is not None:
        return model_type if model_type in FAMILIES else None
    key = (model or "").lower()
    for part, family in _ID_PARTS:
        if part in key:
            return family
    return None


def vllm_rank_flag(rank: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that fits `rank`; None above the largest."""
    return next((allowed for allowed in VLLM_MAX_LORA_RANKS if allowed >= rank), None)


def lorax_padded_rank(rank: int) -> int:
    """The rank LoRAX's SGMV kernels compute with: at least 8, else the next multiple of 16."""
    if rank <= LORAX_MIN_RANK:
        return LORAX_MIN_RANK
    return math.ceil(rank / LORAX_RANK_BLOCK) * LORAX_RANK_BLOCK


def _names(modules: Iterable[str]) -> str:
    return ", ".join(modules)


def _module_fix(unknown: Sequence[str], served: Sequence[str]) -> str:
    """What to do about target modules a server does not serve: fix the likely typos, else remove them."""
    close = {m: difflib.get_close_matches(m, served, n=1, cutoff=0.6) for m in unknown}
    if all(close.values()):
        return "write " + ", ".join(f"{close[m][0]} instead of {m}" for m in unknown)
    return f"remove {_names(unknown)} from adapter.target_modules"


def _same_model(a: str, b: str) -> bool:
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


def check_adapter(
    *,
    r: int | None,
    target_modules: Sequence[str] | str | None,
    bias: str | None = "none",
    use_dora: bool = False,
    lora_bias: bool = False,
    modules_to_save: Sequence[str] | None = None,
    rank_pattern: Mapping[str, int] | None = None,
    peft_type: str | None = "LORA",
    base_model: str | None = None,
    model_type: str | None = None,
    served_model: str | None = None,
    served_model_type: str | None = None,
    targets: Iterable[str] = SERVERS,
) -> list[Finding]:
    """Every finding for the servers in `targets`, errors first, then warnings and notes.

    `r`, `rank_pattern`, `target_modules`, `bias`, `use_dora`, `lora_bias`, `modules_to_save`
    and `peft_type` are the adapter's settings (adapter_config.json's keys; a value left None is
    not checked). `base_model` is the model it is trained on, `model_type` that model's
    config.json `model_type` when known (else the family is read from the id); the module checks
    need a known family. `served_model` is the model the server is started with, when it is not
    the adapter's own base (check-adapter --base)."""
    wanted = [t for t in SERVERS if t in set(targets)]
    found: list[Finding] = []
    for server in wanted:
        if peft_type is not None and peft_type.upper() != "LORA":
            name = SERVER_NAMES[server]
            found.append(
                Finding(
                    f"{server}.not_lora",
                    server,
                    "error",
                    "peft_type",
                    f"{name} serves LoRA adapters only, not {peft_type}",
                    "train a LoRA adapter (adapter.type: lora)",
                )
            )
            continue
        ranks, modules, family = (
            _ranks(r, rank_pattern),
            _module_list(target_modules),
            family_of(base_model, model_type),
        )
        if server == "vllm":
            found += _vllm(ranks, modules, family, bias, use_dora, lora_bias, list(modules_to_save or ()))
        else:
            found += _lorax(ranks, modules, family)
        if served_model is not None and base_model is not None:
            found += _base_checks(server, base_model, model_type, served_model, served_model_type)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(found, key=lambda f: order[f.severity])


def _ranks(r: int | None, rank_pattern: Mapping[str, int] | None) -> list[int]:
    """The distinct ranks of the adapter's modules: `r` and any per-module `rank_pattern` ones."""
    ranks = {r} if isinstance(r, int) and not isinstance(r, bool) else set()
    ranks |= {v for v in (rank_pattern or {}).values() if isinstance(v, int) and not isinstance(v, bool)}
    return sorted(ranks)


def _module_list(target_modules: Sequence[str] | str | None) -> list[str] | None:
    """The target module names, or None when they cannot be checked (a regular expression, which
    peft matches against full module paths, or nothing given)."""
    if target_modules is None:
        return None
    if isinstance(target_modules, str):
        return [] if target_modules == ALL_LINEAR else None
    return [m for m in target_modules if isinstance(m, str) and m != ALL_LINEAR]


def _vllm(
    ranks: list[int],
    modules: list[str] | None,
    family: str | None,
    bias: str | None,
    use_dora: bool,
    lora_bias: bool,
    modules_to_save: list[str],
) -> list[Finding]:
    found: list[Finding] = []
    top = max(ranks, default=None)
    if top is not None:
        flag = vllm_rank_flag(top)
        if flag is None:
            found.append(
                Finding(
                    "vllm.rank_above_max",
                    "vllm",
                    "error",
                    "r",
                    f"vLLM serves ranks up to {VLLM_MAX_LORA_RANKS[-1]}, its largest --max-lora-rank, "
                    f"and this adapter's rank is {top}",
                    f"set adapter.r to {VLLM_MAX_LORA_RANKS[-1]} or less",
                )
            )
        elif top > VLLM_DEFAULT_MAX_LORA_RANK:
            exact = "" if flag == top else f", the smallest value it allows above {top}"
            found.append(
                Finding(
                    "vllm.rank_above_default",
                    "vllm",
                    "warning",
                    "r",
                    f"vLLM refuses rank {top} with its default --max-lora-rank {VLLM_DEFAULT_MAX_LORA_RANK}",
                    f"start vLLM with --max-lora-rank {flag}{exact}",
                    flag=f"--max-lora-rank {flag}",
                )
            )
    if bias not in (None, "none"):
        found.append(
            Finding(
                "vllm.bias",
                "vllm",
                "error",
                "bias",
                f"vLLM refuses adapters that train biases (bias: {bias}); current releases have no flag for "
                "them, older ones took --enable-lora-bias",
                "set adapter.bias: none",
            )
        )
    if lora_bias:
        found.append(
            Finding(
                "vllm.lora_bias",
                "vllm",
                "error",
                "lora_bias",
                "vLLM refuses adapters with a bias on LoRA B (lora_bias)",
                "train without lora_bias",
            )
        )
    if use_dora:
        found.append(
            Finding(
                "vllm.dora",
                "vllm",
                "error",
                "use_dora",
                "vLLM does not serve DoRA adapters (use_dora)",
                "train a plain LoRA adapter, or merge this one into the base model",
            )
        )
    saved = [m for m in modules_to_save if m not in VLLM_MODULES_TO_SAVE]
    if saved:
        found.append(
            Finding(
                "vllm.modules_to_save",
                "vllm",
                "error",
                "modules_to_save",
                f"vLLM refuses adapters that save whole modules (modules_to_save: {_names(saved)})",
                "train without modules_to_save, or merge this adapter into the base model",
                modules=tuple(saved),
            )
        )
    if modules is not None and family is not None:
        served = FAMILIES[family].vllm
        unknown = [m for m in modules if m not in served]
        if unknown:
            found.append(
                Finding(
                    "vllm.unknown_modules",
                    "vllm",
                    "error",
                    "target_modules",
                    f"vLLM has LoRA for {_names(served)} on {family} models, and refuses adapters on {_names(unknown)}",
                    _module_fix(unknown, served),
                    modules=tuple(unknown),
                )
            )
    return found


def _lorax(ranks: list[int], modules: list[str] | None, family: str | None) -> list[Finding]:
    found: list[Finding] = []
    if modules is not None and family is not None:
        served = FAMILIES[family].lorax
        dropped = [m for m in modules if m not in served]
        if dropped:
            found.append(
                Finding(
                    "lorax.dropped_modules",
                    "lorax",
                    "error",
                    "target_modules",
                    f"LoRAX serves {_names(served)} on {family} models, and drops the adapter's {_names(dropped)} "
                    "with a warning in its log: it would serve another adapter than the one trained",
                    _module_fix(dropped, served),
                    modules=tuple(dropped),
                )
            )
    top = max(ranks, default=None)
    if top is not None and top > LORAX_FAST_MAX_RANK:
        found.append(
            Finding(
                "lorax.rank_slow",
                "lorax",
                "note",
                "r",
                f"LoRAX's fast SGMV kernels stop at rank {LORAX_FAST_MAX_RANK}; rank {top} takes its slower path",
                f"set adapter.r to {LORAX_FAST_MAX_RANK} or less for full speed",
            )
        )
    padded = [(rank, lorax_padded_rank(rank)) for rank in ranks if lorax_padded_rank(rank) != rank]
    if padded:
        shown = ", ".join(f"{rank} to {to}" for rank, to in padded)
        found.append(
            Finding(
                "lorax.rank_padded",
                "lorax",
                "note",
                "r",
                f"LoRAX pads rank {shown} for its SGMV kernels, so the adapter costs the memory and compute "
                "of the larger rank",
                "use rank 8 or a multiple of 16",
            )
        )
    return found


def _base_checks(
    server: str, base_model: str, model_type: str | None, served_model: str, served_model_type: str | None
) -> list[Finding]:
    """The adapter's base model against the model the server runs."""
    if _same_model(base_model, served_model):
        return []
    name = SERVER_NAMES[server]
    fix = f"start LoRAX with --model-id {base_model}" if server == "lorax" else f"vllm serve {base_model}"
    trained, served = family_of(base_model, model_type), family_of(served_model, served_model_type)
    if trained is not None and served is not None and trained != served:
        what = "refuses" if server == "lorax" else "cannot load"
        return [
            Finding(
                f"{server}.other_architecture",
                server,
                "error",
                "base_model_name_or_path",
                f"{name} {what} an adapter trained on {base_model} ({trained}) on {served_model} ({served}): "
                "the architectures differ",
                fix,
            )
        ]
    same = f"both {trained}" if trained is not None and trained == served else "architectures not known here"
    return [
        Finding(
            f"{server}.other_base",
            server,
            "warning",
            "base_model_name_or_path",
            f"{name} would serve {served_model}, but the adapter is trained on {base_model} ({same}): it loads "
            "only if both have the same layer shapes, and behaves as trained only on its own base",
            fix,
        )
    ]
