"""The modality adapter: a BERT-style Q-Former shared by all tapped encoder layers, per-tap learned queries,
per-query softmax fusion over taps, and a projection into the LLM's embedding space.

Module and parameter names follow the released checkpoint (`perception.connector.qformer.layer.N.attention.self.
query.weight`, ...), so its `model.safetensors` loads strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Heads(nn.Module):
    """Multi-head scaled dot-product attention with BERT's parameter names (query/key/value)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        def split(x: torch.Tensor) -> torch.Tensor:  # (b, n, h*d) -> (b, h, n, d)
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q, k, v = split(self.query(queries)), split(self.key(context)), split(self.value(context))
        # No mask: queries attend to each other bidirectionally and to every encoder frame.
        dropout = self.dropout if self.training else 0.0
        if dropout and q.device.type == "cpu":
            out = _attention_with_dropout(q, k, v, dropout)
        else:  # CUDA's fused kernels take dropout themselves
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return out.transpose(1, 2).flatten(2)


def _attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """softmax(q kᵀ / √d) with dropout on the probabilities, then v: what `scaled_dot_product_attention` computes
    with `dropout_p`, drawing the same dropout mask. On a CPU that call falls back to a generic path that scales every
    key, checks each row for all -inf and makes extra copies of the frames' keys. Here only the few queries are
    scaled: a desta-tiny training step with the release's 6-layer connector went from 6.7 to 5.6-5.8 s on 2 cores, and
    with the CPU presets' 2 layers in bf16 from 2.3 to 1.4 s (`benchmarks/bench_train.py`)."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    return torch.matmul(F.dropout(scores.softmax(dim=-1), p, training=True), v)


class _AddNorm(nn.Module):
    """Post-LN residual: LayerNorm(x + dropout(dense(y)))."""

    def __init__(self, in_size: int, hidden: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815 (checkpoint name)
        self.dropout = nn.Dropout(dropout)

    def forward(self, update: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(update)))


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.self = _Heads(hidden, heads, dropout)
        self.output = _AddNorm(hidden, hidden, dropout, eps)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(queries, context), queries)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class QFormerLayer(nn.Module):
    """Self-attention over the queries, cross-attention to the encoder frames, feed-forward; all post-LN."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(hidden, heads, dropout, eps)
        self.crossattention = _Attention(hidden, heads, dropout, eps)
        self.intermediate = _Intermediate(hidden, ffn)
        self.output = _AddNorm(ffn, hidden, dropout, eps)

    def forward(self, queries: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        x = self.attention(queries, queries)
        x = self.crossattention(x, frames)
        return self.output(self.intermediate(x), x)


class QFormer(nn.Module):
    def __init__(self, num_layers: int, hidden: int, heads: int, ffn: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(QFormerLayer(hidden, heads, ffn, dropout, eps) for _ in range(num_layers))

    def forward(self, queries: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            queries = layer(queries, frames)
        return queries


class QFormerConnector(nn.Module):
    """Tapped encoder states -> `prompt_size` soft tokens in the LLM embedding space."""

    def __init__(
        self,
        *,
        num_taps: int,
        encoder_hidden: int,
        encoder_heads: int,
        llm_hidden: int,
        num_layers: int,
        prompt_size: int = 64,
        ffn: int = 3072,
        dropout: float = 0.1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.layer_prompts = nn.ParameterList(
            nn.Parameter(torch.randn(1, prompt_size, encoder_hidden)) for _ in range(num_taps)
        )
        self.layer_weights = nn.Parameter(torch.zeros(prompt_size, num_taps))
        self.qformer = QFormer(num_layers, encoder_hidden, encoder_heads, ffn, dropout, eps)
        self.proj = nn.Sequential(nn.LayerNorm(encoder_hidden), nn.Linear(encoder_hidden, llm_hidden))

    @property
    def prompt_size(self) -> int:
        return self.layer_weights.shape[0]

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """taps: one (batch, frames, encoder_hidden) tensor per tapped layer -> (batch, prompt_size, llm_hidden)."""
        if len(taps) != len(self.layer_prompts):
            raise ValueError(f"expected {len(self.layer_prompts)} tapped layers, got {len(taps)}")
        batch = taps[0].shape[0]
        # The Q-Former is shared, so all taps run as one batch: (taps*batch, ...).
        queries = torch.cat([prompt.expand(batch, -1, -1) for prompt in self.layer_prompts])
        frames = torch.cat(list(taps)).to(queries.dtype)
        per_tap = self.qformer(queries, frames).unflatten(0, (len(taps), batch))  # (taps, b, q, h)
        weights = torch.softmax(self.layer_weights, dim=-1)  # (q, taps): each query mixes the taps its own way
        fused = torch.einsum("tbqh,qt->bqh", per_tap, weights.to(per_tap.dtype))
        return self.proj(fused)
