"""A merged model: the adapter folded into its base, saved as one ordinary transformers folder.

`export_merged` loads the base unquantized in the recipe's compute dtype (never 4-bit: a merged
4-bit model cannot be saved as plain weights), attaches the adapter, `merge_and_unload()`s it and
saves safetensors weights with the tokenizer, the generation config, a model card (README.md) and
`lora_recipes_export.json` (what was merged, and the files written). The folder is assembled in a
hidden sibling folder and renamed into place, so a reader sees nothing or all of it; files get the
modes the umask allows. A non-empty destination is refused unless `overwrite` is set, and even then
only an earlier export is replaced: files this module did not write are never deleted.

Flat arguments, as everywhere in `model/`: the CLI finds the adapter and the recipe of a run
directory and passes what they say.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lora_recipes.atomic import (
    replace_files_from,
    staging_dir,
    widen_to_umask,
    write_json_atomic,
    write_text_atomic,
)
from lora_recipes.errors import RuntimeFailure, UserError
from lora_recipes.model.source import BaseIdentity, ModelSource, looks_like_hub_id

MARKER = "lora_recipes_export.json"
CARD = "README.md"
MARKER_FORMAT = 1


@dataclass(frozen=True)
class ExportInfo:
    """What a merged model is made of: what its model card and marker file say."""

    base: BaseIdentity
    adapter: dict[str, Any]  # the adapter's adapter_config.json
    dtype: str
    name: str | None = None  # the recipe's name
    run: str | None = None  # the run directory's name (never its path)
    files: tuple[str, ...] = field(default=())

    def lora_settings(self) -> dict[str, Any]:
        keys = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora")
        return {k: self.adapter[k] for k in keys if k in self.adapter}

    def to_json(self) -> dict[str, Any]:
        base = self.base.to_json()
        base.pop("location", None)  # a path on the machine that exported it
        return {
            "format": MARKER_FORMAT,
            "base": base,
            "lora": self.lora_settings(),
            "dtype": self.dtype,
            "recipe": self.name,
            "run": self.run,
            "files": sorted(self.files),
        }


CardFunction = Callable[[ExportInfo], str]


def minimal_card(info: ExportInfo) -> str:
    """A short model card: the base model (front matter that the hub links), how it was merged
    and the LoRA settings. The default of `export_merged(card=...)`: pass a fuller card function
    (a training model card, say) to replace it."""
    front = ["---", "library_name: transformers", "tags:", "- lora-recipes", "- lora", "- merged"]
    if looks_like_hub_id(info.base.id):
        front.insert(1, f"base_model: {info.base.id}")
    front.append("---")
    title = info.name or info.run or "merged model"
    lines = [
        *front,
        "",
        f"# {title}",
        "",
        f"A LoRA adapter trained with lora-recipes{f' (run directory `{info.run}`)' if info.run else ''}, merged "
        "into its base "
        f"model `{info.base.id}` and saved in {info.dtype}. It loads like any causal language model:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
        "## Base model",
        "",
        f"- id: `{info.base.id}`" + (f" (revision `{info.base.id_revision}`)" if info.base.id_revision else ""),
    ]
    if info.base.note:
        lines.append(f"- note: {info.base.note}")
    lines += ["", "## LoRA settings", ""]
    lines += [f"- {k}: {json.dumps(v)}" for k, v in info.lora_settings().items()]
    return "\n".join(lines) + "\n"


def export_dtype(*, recipe_dtype: str, bits: int | None, compute_dtype: str, device_type: str) -> str:
    """The dtype a merged model is loaded, merged and saved in: the recipe's
    `model_parameters.dtype` when set, else the 4-bit compute dtype of a 4-bit recipe (what the
    adapter was trained to work with), else what `auto` means on the device (float32 on a CPU)."""
    if recipe_dtype != "auto":
        return recipe_dtype
    if bits == 4:
        return compute_dtype
    from lora_recipes.model.loading import resolve_dtype

    return str(resolve_dtype("auto", device_type)).removeprefix("torch.")


def check_destination(out: Path, *, overwrite: bool) -> set[str] | None:
    """Whether `out` may receive an export: None when it is absent or empty, else (with
    `overwrite`, an earlier export only) the names of the files that export wrote."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--merged {out}: is a file, not a folder")
    if not out.is_dir():
        return None
    present = {item.name for item in out.iterdir()}
    if not present:
        return None
    if not overwrite:
        raise UserError(
            f"--merged {out}: the folder is not empty; choose another folder, or pass --overwrite to replace "
            "an earlier export there"
        )
    try:
        earlier = json.loads((out / MARKER).read_text(encoding="utf-8"))
        written = {str(name) for name in earlier["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"--merged {out}: not an earlier export (it has no readable {MARKER}), and export never deletes "
            "files it did not write; empty the folder yourself or choose another"
        ) from None
    foreign = sorted(present - written - {MARKER})
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(
            f"--merged {out}: holds files an earlier export did not write ({shown}); export never deletes "
            "files it did not write: move them away or choose another folder"
        )
    return written


def export_merged(
    source: ModelSource,
    adapter_dir: Path,
    out: Path,
    *,
    load_options: dict[str, Any],
    dtype: str,
    device: str = "cpu",
    overwrite: bool = False,
    name: str | None = None,
    run: str | None = None,
    card: CardFunction = minimal_card,
    say: Callable[[str], None] = lambda _line: None,
) -> ExportInfo:
    """Merge the adapter in `adapter_dir` into the base `source` (loaded unquantized in `dtype`
    on `device` with the rest of `load_options`, the keyword arguments of `load_base_model`) and
    write the merged model into `out` (see the module notes). Returns what was written."""
    from lora_recipes.model import loading as models

    out = Path(out)
    if out.is_symlink():
        out = out.resolve()  # a link to a folder: write into the folder, keep the link
    check_destination(out, overwrite=overwrite)
    adapter_config = _read_adapter_config(adapter_dir)
    options = {**load_options, "bits": None, "dtype": dtype}
    revision, trust = options.get("revision"), bool(options.get("trust_remote_code", False))
    say(f"loading {source.describe()} in {dtype} on {device}")
    tokenizer = models.load_tokenizer(source, revision=revision, trust_remote_code=trust)
    base = models.load_base_model(source, **options, device=device, exact_dtype=True)
    identity = models.base_identity(base)
    assert identity is not None  # load_base_model attaches it
    untied = untie_adapted_embeddings(base, adapter_config)
    if untied:
        say("the adapter changes an embedding the base shares between input and output: saved untied")
    try:
        with warnings.catch_warnings():
            if untied:  # peft judges tying by the class's _tied_weights_keys and warns of what we just undid
                warnings.filterwarnings("ignore", "Model has `tie_word_embeddings=True`", UserWarning)
            model = models.load_adapter(base, adapter_dir)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{adapter_dir}: the adapter does not fit the base model {source.describe()} ({first})"
        ) from None
    say("merging the adapter into the base weights")
    try:
        merged = model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # safe_merge found NaNs
        raise RuntimeFailure(f"{adapter_dir}: merging failed: {exc}") from None
    _clean_for_saving(merged)

    try:
        return _write(
            merged, tokenizer, out, overwrite, ExportInfo(identity, adapter_config, dtype, name, run), card, say
        )
    except PermissionError as exc:
        raise UserError(f"--merged {out}: {exc.strerror or exc} ({exc.filename})") from None
    except OSError as exc:
        raise RuntimeFailure(f"--merged {out}: writing failed: {exc}") from None


def _write(
    merged: Any, tokenizer: Any, out: Path, overwrite: bool, info: ExportInfo, card: CardFunction, say: Any
) -> ExportInfo:
    staging = staging_dir(out.parent, out.name)
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if merged.generation_config is not None and not (staging / "generation_config.json").is_file():
            merged.generation_config.save_pretrained(staging)
        files = tuple(sorted(item.name for item in staging.iterdir()))
        info = replace(info, files=(*files, CARD))
        write_text_atomic(staging / CARD, card(info))
        write_json_atomic(staging / MARKER, info.to_json())
        widen_to_umask(staging)
        _move_into_place(staging, out, overwrite=overwrite, new_files=set(info.files))
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless something failed
    say(f"wrote {out}")
    return info


def _targets(pattern: Any, name: str) -> bool:
    """Whether peft's `target_modules` (a list of name suffixes, or a regular expression) picks
    the module `name`. ("all-linear" never picks the output layer.)"""
    if isinstance(pattern, str):
        return pattern != "all-linear" and re.fullmatch(pattern, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in pattern or ())


def untie_adapted_embeddings(model: Any, adapter_config: dict[str, Any]) -> bool:
    """Give the output layer its own copy of the weights when the base ties it to the input
    embedding and the adapter changes one of them: merging would otherwise change both. Returns
    whether it did."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    weight = getattr(outputs, "weight", None)
    if inputs is None or weight is None or weight.data_ptr() != inputs.weight.data_ptr():
        return False
    names = [n for n, m in model.named_modules() if m is inputs or m is outputs]
    if not any(_targets(adapter_config.get("target_modules"), n) for n in names):
        return False
    import torch

    outputs.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    return True


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{adapter_dir}: cannot read adapter_config.json ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a PEFT adapter config")
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{path}: a {config.get('peft_type')} adapter; only LoRA adapters can be merged")
    return config


def _clean_for_saving(model: Any) -> None:
    """Nothing of the adapter or of a quantized load stays in the saved config."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config


def _move_into_place(staging: Path, out: Path, *, overwrite: bool, new_files: set[str]) -> None:
    """`staging` becomes `out`: one rename when `out` is absent or empty, else (an earlier export,
    checked again now) file by file, with the marker listing old and new files while they mix,
    and the earlier export's files that this one does not have removed."""
    earlier = check_destination(out, overwrite=overwrite)
    if earlier is None:
        try:
            os.replace(staging, out)  # replaces an empty folder too
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EBUSY, errno.ENOTEMPTY, errno.EEXIST):
                raise
        if out.is_dir() and any(out.iterdir()):
            raise UserError(f"--merged {out}: something was written there while exporting; nothing was changed")
        earlier = set()
    marker = json.loads((staging / MARKER).read_text(encoding="utf-8"))
    (staging / MARKER).unlink()
    # While old and new files mix, the marker names both: a later --overwrite still knows them all.
    write_json_atomic(out / MARKER, {**marker, "files": sorted(earlier | new_files)})
    try:
        replace_files_from(staging, out)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        for item in sorted(staging.iterdir()):  # another file system (a mount point): copy
            shutil.move(str(item), out / item.name)
    for stale in sorted(earlier - new_files - {MARKER}):
        path = out / stale
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    write_json_atomic(out / MARKER, marker)
