"""Steering a transformers model: add ``sum_e c[e] * v[e, L]`` to the output of each chosen block L.

This is the reference semantics every backend must reproduce: the same point as extraction
(output of block L, ``hidden_states[L+1]``), every position of the sequence, prompt and generated
tokens alike; with controls (``emolab.core.steering``) a row may instead ablate or clamp an emotion, and
steer its prompt or its generated tokens only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.models import decoder_layers
from emolab.core.steering import Steering
from emolab.steer.row_steering import Readout, RowSteering, scope_rows

__all__ = ["HFSteerer"]


class HFSteerer:
    """Holds a bundle's basis on the model's device/dtype and steers forwards of the model.

    ``steer(coeffs)``: every forward inside adds ``coeffs @ basis`` at each chosen layer, at every position;
    ``coeffs`` may be ``[n_emotions]`` (one steering for the whole batch) or ``[batch, n_emotions]`` (one per
    row). ``steer_rows(steerings)``: one full ``Steering`` per row (modes and scopes too), the first forward
    inside being the prompt and every later one a generated token (``generate``'s order). Both run the one
    operator, ``emolab.core.steering_ops.steer_rows``, through ``rows()`` (``RowSteering``).
    """

    def __init__(self, model: torch.nn.Module, bundle: EmotionBundle, alpha_scale: str | None = None,
                 basis: np.ndarray | None = None) -> None:
        blocks = decoder_layers(model)
        bundle.check_model(len(blocks), int(model.config.hidden_size))
        param = next(model.parameters())
        self.alpha_scale = bundle.resolve_alpha_scale(alpha_scale)
        # [n_layers, n_emotions, hidden]; an explicit basis is for tests and experiments.
        basis = bundle.steering_basis(self.alpha_scale) if basis is None else basis
        self.model = model
        self.bundle = bundle
        self.basis = torch.as_tensor(basis, dtype=param.dtype, device=param.device)
        self._basis_array = np.asarray(basis, dtype=np.float32)
        self._rows: RowSteering | None = None

    def rows(self) -> RowSteering:
        """The per-row operator (modes, scopes, readout) on this steerer's basis (``emolab.steer.row_steering``)."""
        if self._rows is None:
            self._rows = RowSteering(self.model, self.bundle, self._basis_array)
        return self._rows

    def delta(self, coeffs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[n_layers, (batch,) hidden]``: what plain additions of ``coeffs`` add at each chosen layer."""
        c = torch.as_tensor(np.asarray(coeffs, dtype=np.float32), device=self.basis.device)
        return torch.einsum("...e,leh->l...h", c, self.basis.float()).to(self.basis.dtype)

    @contextmanager
    def steer(self, coeffs: np.ndarray | torch.Tensor | None) -> Iterator[None]:
        """Within the context, forwards of the model are steered by ``coeffs`` (None/zeros: untouched)."""
        if coeffs is None or not np.any(np.asarray(coeffs)):
            yield
            return
        array = np.asarray(coeffs, dtype=np.float32)
        rows = [array] if array.ndim == 1 else list(array)
        steerings = [Steering(tuple((e, float(a)) for e, a in enumerate(row) if a)) for row in rows]
        with self._hooked(steerings, broadcast=array.ndim == 1):
            yield

    @contextmanager
    def steer_rows(self, steerings: Sequence[Steering | None], readout: Readout | None = None) -> Iterator[None]:
        """Within the context, row ``b`` of every forward is steered by ``steerings[b]`` (modes, scope): the
        first forward is the prompt phase, every later one the generated phase. ``readout(layer index,
        [batch, positions, n])`` receives every chosen block's projections before its steering."""
        if not any(steerings) and readout is None:
            yield
            return
        with self._hooked(list(steerings), broadcast=False, readout=readout):
            yield

    @contextmanager
    def _hooked(self, steerings: list[Steering | None], broadcast: bool, readout: Readout | None = None) -> Iterator[None]:
        rows = self.rows()
        tables = rows.tables(steerings)
        forwards = [0]

        def count(module, args, kwargs):
            forwards[0] += 1

        def token_rows(batch: int, positions: int) -> torch.Tensor:
            phase = "prompt" if forwards[0] <= 1 else "generated"
            scopes = tables.scopes * batch if broadcast else tables.scopes
            found = scope_rows(scopes, phase, positions, rows.device)
            return found.clamp(max=1) if broadcast else found  # one steering for every row: all point at row 1

        handle = self.model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            with rows.hooked(tables, token_rows, readout):
                yield
        finally:
            handle.remove()
