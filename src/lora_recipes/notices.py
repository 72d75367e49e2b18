"""Third-party notices a lora-recipes command has no use for, silenced one by one by logger and
message (never a whole library's logging, never warnings in general).

- bitsandbytes (0.49+), on CPUs with AVX512-BF16, logs at import "Failed to load CPU
  gemm_4bit_forward from kernels-community ... Please make sure you already `pip install kernels`".
  That kernel serves bitsandbytes' inference-only repacked 4-bit layout, which lora-recipes turns
  off (model.loading.disable_cpu_inference_repack: after the repack no gradient reaches the layer),
  so the kernel would never run: the advice is noise on every CPU command.
- datasets' JSON builder logs "Failed to load JSON from file ... ArrowInvalid" at ERROR level
  before it raises; `data.sources` catches the error and names the file and line itself, so the log
  line would print the same fault twice, the first time as a pyarrow internal.

`quiet_known_notices()` installs the filters; call it before bitsandbytes (or datasets) is imported
(loggers exist before the modules that use them, so a filter set first catches the import-time
record).
Idempotent. Nothing heavy is imported here.
"""

from __future__ import annotations

import logging

# (logger name, start of the message) of each notice that is dropped.
NOTICES: tuple[tuple[str, str], ...] = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("datasets.packaged_modules.json.json", "Failed to load JSON from file"),
)


class _DropNotice(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_known_notices() -> None:
    """Drop the notices in `NOTICES` (see the module notes)."""
    for name, prefix in NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropNotice(prefix))
