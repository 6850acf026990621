"""Linear layers that stay fast when only a few rows pass through them (decode steps).

A decode step sends one row per sequence through every projection and the vocabulary head. For such a product,
y = x Wᵀ with a few rows in x, the CPU BLAS under torch picks a kernel that is 1.2-5x slower than for the same
product taken from the weight's side, y = (W xᵀ)ᵀ. Measured on a 2-core AVX-512 CPU: Qwen2.5-0.5B's vocabulary head
(151936 x 896) 71 -> 54 ms for 16 rows and 63 -> 13 ms for 4, its MLP projections 1.4 -> 0.9 ms for 16 rows; a
batch-16 generate() of 64 tokens 22.6 -> 19.4 s with the same tokens. From about 64 rows on (prefill, training) the
usual form is as fast or faster, and bf16 products (oneDNN) are faster as they are, so only fp32 products of at most
`FEW_ROWS` rows on a CPU take the other form. Both compute the same sums, in another order (float rounding only).

The vocabulary head also gets generate()'s kept rows in standard layout (`_head_input_in_standard_layout`).
"""

from __future__ import annotations

import torch
from torch import nn

FEW_ROWS = 32


class FewRowsLinear(nn.Linear):
    """An `nn.Linear` (same parameters, same state dict) whose fp32 CPU products of few rows use the faster form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features if self.in_features else 0
        if not 0 < rows <= FEW_ROWS or x.dtype != torch.float32 or not x.is_cpu:
            return super().forward(x)
        flat = x.reshape(rows, self.in_features).T
        product = self.weight @ flat if self.bias is None else torch.addmm(self.bias[:, None], self.weight, flat)
        return product.T.contiguous().view(*x.shape[:-1], self.out_features)


def use_few_rows_linear(model: nn.Module) -> nn.Module:
    """Turns every plain `nn.Linear` of `model` into a `FewRowsLinear` in place (parameters untouched) and, for a
    model with a vocabulary head, hands that head its input rows in standard layout. Safe to call again."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FewRowsLinear
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, nn.Module) and not getattr(head, "_rows_in_standard_layout", False):
        head.register_forward_pre_hook(_head_input_in_standard_layout)
        head._rows_in_standard_layout = True
    return model


def _head_input_in_standard_layout(_head: nn.Module, args: tuple) -> tuple | None:
    """generate() hands the vocabulary head only each row's last prompt position (`hidden[:, -1:, :]`, a view that
    keeps the prompt's row stride). torch.matmul does not fold such a view into one matrix product: it expands the
    head weight per row and copies it, which on a CPU in bf16 costs 447 ms instead of 10 ms for desta-mini's head (per
    row). Copying the few kept rows into standard layout first avoids that."""
    hidden = args[0]
    if hidden.dim() == 3 and hidden.stride(0) != hidden.shape[1] * hidden.stride(1):
        return (hidden.clone(memory_format=torch.contiguous_format), *args[1:])
    return None
