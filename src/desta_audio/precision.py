"""Which precision a model loads in when the caller does not say.

bfloat16 where the hardware computes it natively: CUDA GPUs, and CPUs with AVX512-BF16 or AMX, where oneDNN's bf16
matrix products run several times faster than fp32 ones (measured on a 2-core Xeon with AMX: a 1500x512x2048
product 7.6x, desta-tiny's batch of 16 requests 2.2x end to end, with the same ASR word error rate). The release runs
its LLM in bf16 too. Elsewhere float32, since CPUs without native bf16 emulate it and get slower. `$DESTA_DTYPE`
overrides the choice for every command (e.g. `DESTA_DTYPE=float32` for answers that do not depend on how requests
were batched: bf16 rounding does, as on any GPU).

Torch is imported inside the functions so that command-line help stays fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_ENV = "DESTA_DTYPE"
DTYPE_HELP = ("float32, bfloat16 or float16 (default: $DESTA_DTYPE if set, else bfloat16 on GPUs and on CPUs with "
              "native bf16 (AVX512-BF16/AMX), float32 on other CPUs).")
_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def parse_dtype(name: str, *, source: str = "dtype") -> "torch.dtype":
    import torch

    return getattr(torch, _canonical(name, source))


def _canonical(name: str, source: str) -> str:
    try:
        return _NAMES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown {source} {name!r}; use float32, bfloat16 or float16") from None


def check_dtype_names(dtype: str | None) -> None:
    """Raises ValueError for an unknown `--dtype` or `$DESTA_DTYPE` before any model work (no torch needed)."""
    if dtype is not None:
        _canonical(dtype, "--dtype")
    elif os.environ.get(DTYPE_ENV):
        _canonical(os.environ[DTYPE_ENV], f"${DTYPE_ENV}")


def dtype_name(dtype: "torch.dtype") -> str:
    """torch.bfloat16 -> "bfloat16", as --dtype takes it and manifests record it."""
    return str(dtype).removeprefix("torch.")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles: bf16 matrix products run natively."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def default_dtype(device: "torch.device") -> "torch.dtype":
    import torch

    if os.environ.get(DTYPE_ENV):
        return parse_dtype(os.environ[DTYPE_ENV], source=f"${DTYPE_ENV}")
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: "torch.dtype | str | None", device: "torch.device") -> "torch.dtype":
    """An explicit dtype (or its name) as given; None: the default for `device`."""
    if dtype is None:
        return default_dtype(device)
    return parse_dtype(dtype) if isinstance(dtype, str) else dtype


def cpu_summary() -> str:
    """One line for benchmark tables, whose figures depend on it: threads, vector unit, bf16 support."""
    import torch

    units = [name for name, has in (("AMX", torch.cpu._is_amx_tile_supported()),
                                    ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported())) if has]
    bf16 = f"native bf16 ({', '.join(units)})" if units else "no native bf16"
    return f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, {bf16}"
