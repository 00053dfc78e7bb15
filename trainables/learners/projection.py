"""Projection builders shared by CoCoOp, MaPLe and Shared Separate (reference §1.7).

Two shapes of map from a context/feature vector to a prompt width:

* `mlp`:  Linear(in→r, bias, Kaiming-normal/ReLU) → ReLU → Linear(r→out) [→ LayerNorm(out)]
          (r = None: a single Linear(in→out) [→ LayerNorm(out)])
* `lora`: Linear(in→r, no bias) → Linear(r→out) [→ LayerNorm(out)]: a rank-r factorised linear map
          (the paper's "Use LORA"); when r > out a single Linear(in→out, no bias) is all that is left.

The last Linear has a bias only when `final_bias` is on and no LayerNorm follows (the norm's bias
would absorb it); the LayerNorm has a bias iff `final_bias`.
"""

from __future__ import annotations

from torch import nn


def _head(last_in: int, out_dim: int, final_norm: bool, final_bias: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(last_in, out_dim, bias=final_bias and not final_norm)]
    if final_norm:
        layers.append(nn.LayerNorm(out_dim, bias=final_bias))
    return layers


def mlp_projection(in_dim: int, out_dim: int, hidden: int | None, *, final_norm: bool = True,
                   final_bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    last = in_dim
    if hidden is not None:
        first = nn.Linear(in_dim, hidden)
        nn.init.kaiming_normal_(first.weight, nonlinearity="relu")
        layers += [first, nn.ReLU()]
        last = hidden
    return nn.Sequential(*layers, *_head(last, out_dim, final_norm, final_bias))


def lora_projection(in_dim: int, out_dim: int, rank: int, *, final_norm: bool = True,
                    final_bias: bool = True) -> nn.Sequential:
    if rank > out_dim:  # a "low-rank" factor wider than the output is just a linear map
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=False)]
        if final_norm:
            layers.append(nn.LayerNorm(out_dim, bias=final_bias))
        return nn.Sequential(*layers)
    return nn.Sequential(nn.Linear(in_dim, rank, bias=False), *_head(rank, out_dim, final_norm, final_bias))


def projection(in_dim: int, out_dim: int, hidden: int | None, *, use_lora: bool = False,
               final_norm: bool = True, final_bias: bool = True) -> nn.Sequential:
    if use_lora and hidden is not None:
        return lora_projection(in_dim, out_dim, hidden, final_norm=final_norm, final_bias=final_bias)
    return mlp_projection(in_dim, out_dim, hidden, final_norm=final_norm, final_bias=final_bias)


def per_depth(build, depth: int, identical_init: bool = False) -> nn.ModuleList:
    """`depth` projections from `build()`: independently initialised, or deep copies of one (the
    original's `use_unified_projection: false` + deepcopy, reference §9.4)."""
    import copy

    if identical_init:
        first = build()
        return nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(depth - 1)])
    return nn.ModuleList([build() for _ in range(depth)])
