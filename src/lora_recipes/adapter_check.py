"""`lora-recipes check-adapter PATH`: the serving checks of `recipe/serving.py` on a saved adapter.

PATH is a PEFT adapter folder, a training run directory (its `adapter/`), or an
adapter_config.json itself. The file is read with the json module (no peft), its settings are
checked for each target server, and the report says per server whether it serves the adapter,
with which flags, or refuses it. Exit codes (the CLI's): 0 when every target serves it (warnings
and notes included), 1 when a target refuses it, 2 when the file is missing or unreadable or an
option is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes.errors import UserError
from lora_recipes.recipe.checks import did_you_mean
from lora_recipes.recipe.serving import SERVERS, Finding, check_adapter

CONFIG_NAME = "adapter_config.json"
MAX_CONFIG_BYTES = 1024 * 1024  # an adapter_config.json is about 1 KB


def parse_targets(text: str) -> tuple[str, ...]:
    """`vllm,lorax` as a tuple of known server names (an empty text: none). Raises `UserError`."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in SERVERS:
            hint = did_you_mean(name, list(SERVERS)) or "one of " + ", ".join(SERVERS)
            raise UserError(f"--targets: unknown server {name!r} ({hint})")
    return tuple(dict.fromkeys(names))


def find_adapter_config(path: Path) -> Path:
    """The adapter_config.json of an adapter folder, a run directory (`adapter/`), or the file."""
    if path.is_file():
        return path
    for candidate in (path / CONFIG_NAME, path / "adapter" / CONFIG_NAME):
        if candidate.is_file():
            return candidate
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if (path / "model" / "config.json").is_file():
        raise UserError(
            f"{path}: a full fine-tuning run (it holds model/, not an adapter): servers load it as a base model"
        )
    raise UserError(f"{path}: no {CONFIG_NAME} (looked in {path} and {path / 'adapter'})")


def read_adapter_config(path: Path) -> dict[str, Any]:
    """The JSON object in `path`. Raises `UserError` naming the file when it is not one."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: larger than 1 MiB, so not an adapter_config.json")
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object of adapter settings")
    return config


def _expect(path: Path, config: Mapping[str, Any], key: str, ok: bool, expected: str) -> None:
    if not ok:
        raise UserError(f"{path}: {key}: expected {expected}, got {json.dumps(config[key])}")


@dataclass(frozen=True)
class Settings:
    """The adapter_config.json keys the serving checks read."""

    peft_type: str | None
    r: int
    lora_alpha: float | None
    target_modules: tuple[str, ...] | str | None
    bias: str
    use_dora: bool
    lora_bias: bool
    modules_to_save: tuple[str, ...]
    rank_pattern: Mapping[str, int]
    base_model: str | None


def adapter_settings(path: Path, config: Mapping[str, Any]) -> Settings:
    """The settings of `config` (read from `path`), type-checked. Raises `UserError`."""

    def get(key: str, default: Any = None) -> Any:
        return config[key] if config.get(key) is not None else default

    if "r" not in config:
        raise UserError(f"{path}: no r (the LoRA rank): not a LoRA adapter_config.json")
    r = config["r"]
    _expect(path, config, "r", isinstance(r, int) and not isinstance(r, bool) and r >= 1, "a positive integer")
    for key, kind, expected in (
        ("peft_type", str, "text"),
        ("bias", str, "none, all or lora_only"),
        ("use_dora", bool, "true or false"),
        ("lora_bias", bool, "true or false"),
        ("base_model_name_or_path", str, "text"),
        ("rank_pattern", dict, "a mapping of module patterns to ranks"),
        ("modules_to_save", list, "a list of module names"),
    ):
        if config.get(key) is not None:
            _expect(path, config, key, isinstance(config[key], kind), expected)
    modules = config.get("target_modules")
    if modules is not None:
        readable = isinstance(modules, str) or (isinstance(modules, list) and all(isinstance(m, str) for m in modules))
        _expect(path, config, "target_modules", readable, "a list of module names or a pattern")
    ranks = get("rank_pattern", {})
    bad = [k for k, v in ranks.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise UserError(f"{path}: rank_pattern: {bad[0]}: expected a positive integer, got {json.dumps(ranks[bad[0]])}")
    alpha = config.get("lora_alpha")
    return Settings(
        peft_type=get("peft_type"),
        r=r,
        lora_alpha=alpha if isinstance(alpha, int | float) and not isinstance(alpha, bool) else None,
        target_modules=tuple(modules) if isinstance(modules, list) else modules,
        bias=get("bias", "none"),
        use_dora=get("use_dora", False),
        lora_bias=get("lora_bias", False),
        modules_to_save=tuple(str(m) for m in get("modules_to_save", [])),
        rank_pattern=dict(ranks),
        base_model=get("base_model_name_or_path"),
    )


def _local_model_type(model: str | None) -> str | None:
    """The `model_type` in config.json of `model` when it is a local folder that has one."""
    if not model:
        return None
    config = Path(model).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else None
    except (OSError, ValueError):
        return None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    return model_type if isinstance(model_type, str) else None


@dataclass(frozen=True)
class AdapterReport:
    """What each target server would do with one saved adapter."""

    config_path: Path
    settings: Settings
    targets: tuple[str, ...]
    served_model: str | None
    findings: tuple[Finding, ...]

    def refused_by(self) -> list[str]:
        return [t for t in self.targets if any(f.server == t and f.severity == "error" for f in self.findings)]

    def flags(self, server: str) -> list[str]:
        return [f.flag for f in self.findings if f.server == server and f.flag]

    def verdict(self, server: str) -> str:
        errors = sum(f.server == server and f.severity == "error" for f in self.findings)
        if errors:
            return f"refuses it ({errors} error{'s' if errors != 1 else ''})"
        flags = self.flags(server)
        verdict = f"serves it when started with {' '.join(flags)}" if flags else "serves it"
        counts = [
            f"{n} {severity}{'s' if n != 1 else ''}"
            for severity in ("warning", "note")
            if (n := sum(f.server == server and f.severity == severity for f in self.findings))
        ]
        return f"{verdict} ({', '.join(counts)})" if counts else verdict

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "adapter_config": str(self.config_path),
            "settings": {
                "peft_type": s.peft_type,
                "r": s.r,
                "lora_alpha": s.lora_alpha,
                "target_modules": list(s.target_modules) if isinstance(s.target_modules, tuple) else s.target_modules,
                "bias": s.bias,
                "use_dora": s.use_dora,
                "lora_bias": s.lora_bias,
                "modules_to_save": list(s.modules_to_save),
                "rank_pattern": dict(s.rank_pattern),
                "base_model_name_or_path": s.base_model,
            },
            "targets": list(self.targets),
            "served_model": self.served_model,
            "findings": [f.to_json() for f in self.findings],
            "servers": {
                t: {"serves": t not in self.refused_by(), "flags": self.flags(t), "verdict": self.verdict(t)}
                for t in self.targets
            },
            "servable": not self.refused_by(),
        }


def check_adapter_path(path: Path, targets: Sequence[str] = SERVERS, served_model: str | None = None) -> AdapterReport:
    """Read the adapter at `path` and check it for `targets`. Raises `UserError`."""
    config_path = find_adapter_config(path)
    settings = adapter_settings(config_path, read_adapter_config(config_path))
    findings = check_adapter(
        r=settings.r,
        target_modules=settings.target_modules,
        bias=settings.bias,
        use_dora=settings.use_dora,
        lora_bias=settings.lora_bias,
        modules_to_save=settings.modules_to_save,
        rank_pattern=settings.rank_pattern,
        peft_type=settings.peft_type,
        base_model=settings.base_model,
        model_type=_local_model_type(settings.base_model),
        served_model=served_model,
        served_model_type=_local_model_type(served_model),
        targets=targets,
    )
    return AdapterReport(config_path, settings, tuple(targets), served_model, tuple(findings))


def render_text(report: AdapterReport) -> str:
    """The report for people: what the adapter is, a table of findings, one verdict per server."""
    s = report.settings
    modules = ", ".join(s.target_modules) if isinstance(s.target_modules, tuple) else str(s.target_modules)
    lines = [f"{report.config_path}: {s.peft_type or 'LORA'} r={s.r} on {modules}; base {s.base_model or 'not named'}"]
    if not report.targets:
        return "\n".join([*lines, "no target servers to check"]) + "\n"
    if report.findings:
        rows = [("server", "severity", "setting", "finding")] + [
            (f.server, f.severity, f.setting, f"{f.message} ({f.fix})") for f in report.findings
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines += ["", *("  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows), ""]
    else:
        lines.append("no findings")
    lines += [f"{t}: {report.verdict(t)}" for t in report.targets]
    return "\n".join(lines) + "\n"
