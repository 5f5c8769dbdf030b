"""The steering operator: additions, ablations and clamps at one layer, for a batch of tokens of many requests.

What a request asks for (``Steering``: pairs, a mode per emotion, a scope; ``emolab.core.steering``) becomes a
``RowPlan``; ``ControlTables`` turns a plan into one row of per-layer tables, and ``steer_rows`` applies the
rows to a flat batch of tokens. A clamped emotion is held at ``alpha * |b_e,L|`` (the length an ``add`` of
that alpha contributes at layer L), an ablated one at 0.

At each chosen layer L, with ``B`` the steering basis (the vector one unit of alpha adds), ``U`` its
rows normalized, and S the request's clamped and ablated emotions that have a direction at L::

    h1 = h + a @ B                                (the additions)
    h' = h1 + U_S^T (U_S U_S^T)^-1 (t_S - U_S h1)  (after which U_S h' == t_S exactly)

so several constraints hold at once even when the directions are not orthogonal, and additions on
other emotions come first. ``steer_rows`` is that operation for a batch of tokens, each pointing at its
request's row (row 0 is the plain model): the one implementation both backends run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emolab.core.steering import MODES_FIELD, RowPlan, SteeringError

__all__ = ["ControlTables", "steer_rows", "steering_delta"]


@dataclass
class ControlTables:
    """Per-layer operators of a basis, and the arrays that turn a ``RowPlan`` into one row of the tables.

    ``basis``  [L, n, H]   the steering basis (one alpha unit of each emotion at each chosen layer)
    ``units``  [L, n, H]   its rows normalized (zero where an emotion has no direction at a layer)
    ``cross``  [L, n, n]   ``basis @ units^T``: what an addition does to every projection
    ``lengths`` [L, n]     the rows' lengths
    """

    basis: np.ndarray
    units: np.ndarray
    cross: np.ndarray
    lengths: np.ndarray

    @classmethod
    def of(cls, basis: np.ndarray) -> ControlTables:
        basis = np.asarray(basis, dtype=np.float64)
        lengths = np.linalg.norm(basis, axis=2)
        units = basis / np.where(lengths == 0, 1.0, lengths)[:, :, None]
        cross = np.einsum("lah,lbh->lab", basis, units)
        return cls(basis.astype(np.float32), units.astype(np.float32), cross.astype(np.float32),
                   lengths.astype(np.float32))

    def constraint_row(self, plan: RowPlan) -> tuple[np.ndarray, np.ndarray]:
        """``(solve [L, n, n], target [L, n])`` of one request: the embedded ``(U_S U_S^T)^-1`` and the
        levels in hidden-state units, zero outside S (so a row without constraints changes nothing)."""
        n_layers, n, _ = self.units.shape
        solve = np.zeros((n_layers, n, n), dtype=np.float32)
        target = np.zeros((n_layers, n), dtype=np.float32)
        if not plan.constrained.any():
            return solve, target
        units = self.units.astype(np.float64)
        for layer in range(n_layers):
            held = np.flatnonzero(plan.constrained & (self.lengths[layer] > 0))
            if held.size == 0:
                continue
            gram = units[layer, held] @ units[layer, held].T
            if np.linalg.cond(gram) > 1e6:
                raise SteeringError(f"the held directions {held.tolist()} are (nearly) parallel at chosen layer "
                                    f"index {layer}: their projections cannot be set independently",
                                    MODES_FIELD)
            solve[layer][np.ix_(held, held)] = np.linalg.inv(gram)
            target[layer, held] = plan.target[held] * self.lengths[layer, held]
        return solve, target


def _broadcast_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` ([T, k] x [k, m]) as a product summed over k: fused by torch.compile, no library call."""
    return (a.unsqueeze(-1) * b).sum(-2)


def _broadcast_bmv(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``m @ v`` per token ([T, i, j] x [T, j] -> [T, i]) likewise."""
    return (m * v.unsqueeze(-2)).sum(-1)


def _bmv(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.bmm(m, v.unsqueeze(-1)).squeeze(-1)


def steering_delta(hidden: torch.Tensor, rows: torch.Tensor, add: torch.Tensor, basis: torch.Tensor,
                   units: torch.Tensor, cross: torch.Tensor, solve: torch.Tensor | None = None,
                   target: torch.Tensor | None = None, *, fused: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One chosen layer, a flat batch of tokens: ``(what to add to the block output [T, H] float32, the
    projections before steering [T, n] float32)``; the arguments as for ``steer_rows``.

    ``fused`` says how the products over the n directions are written: as matrix products (one library call
    each and no [T, n, H] temporary: right for eager code) or as broadcast products summed over n, which
    torch.compile turns into one reduction over the hidden size and elementwise passes. A library matrix
    product whose inner or outer size is n (6 to 64) is a kernel launch for very little work; five of them
    made a hooked layer cost ~6x the additions alone inside vLLM's CUDA graphs (``scripts/gpu/hook_cost.py``).
    Default: fused while torch.compile traces (vLLM compiled), matrix products otherwise (the HF backend,
    eager vLLM). Both compute the same sums, in another order (float32 rounding)."""
    if fused is None:
        fused = torch.compiler.is_compiling()
    mm, bmv = (_broadcast_mm, _broadcast_bmv) if fused else (torch.matmul, _bmv)
    units, alphas = units.float(), add[rows].float()
    before = mm(hidden.float(), units.T)  # [T, n]: the stream as the request found it (the readout's view)
    delta = mm(alphas, basis.float())
    if solve is not None and target is not None:
        gap = target[rows].float() - (before + mm(alphas, cross.float()))
        delta = delta + mm(bmv(solve[rows].float(), gap), units)  # zero for rows without constraints
    return delta, before


def steer_rows(hidden: torch.Tensor, rows: torch.Tensor, add: torch.Tensor, basis: torch.Tensor,
               units: torch.Tensor, cross: torch.Tensor, solve: torch.Tensor | None = None,
               target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One chosen layer, a flat batch of tokens: ``(steered hidden, projections before steering)``.

    ``hidden`` [T, H]; ``rows`` [T] int64, each token's request row (0 = plain); ``add`` [R, n] alphas per
    row; ``basis``/``units`` [n, H] and ``cross`` [n, n] of this layer; ``solve`` [R, n, n] and ``target``
    [R, n] this layer's constraint tables (None: additions only). Projections and the solve run in float32;
    the change is cast to ``hidden``'s dtype once. No Python branches on values, no host sync: graph-safe.
    """
    delta, before = steering_delta(hidden, rows, add, basis, units, cross, solve, target)
    return hidden + delta.to(hidden.dtype), before
