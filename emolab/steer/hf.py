"""Steering a transformers model: add ``sum_e c[e] * v[e, L]`` to the output of each chosen block L.

This is the reference semantics every backend must reproduce: the same point as extraction
(output of block L, ``hidden_states[L+1]``), every position of the sequence, prompt and generated
tokens alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.models import decoder_layers
from emolab.core.push import push

__all__ = ["HFSteerer"]


class HFSteerer:
    """Holds a bundle's basis on the model's device/dtype (cast once) and applies coefficients.

    ``coeffs`` may be ``[n_emotions]`` (one steering for the whole batch) or ``[batch, n_emotions]``
    (one per row). ``steer`` is ``applied(additions(coeffs))``: the batched HF server computes the additions
    of its rows once per change of the batch and applies them at every step, through the same two methods.
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

    def delta(self, coeffs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[n_layers, (batch,) hidden]``: what gets added at each chosen layer."""
        c = torch.as_tensor(np.asarray(coeffs, dtype=np.float32), device=self.basis.device).to(self.basis.dtype)
        return torch.einsum("...e,leh->l...h", c, self.basis)

    def additions(self, coeffs: np.ndarray | torch.Tensor | None) -> list[torch.Tensor] | None:
        """What ``push`` adds at each chosen layer: ``[hidden]`` for one steering, ``[batch, 1, hidden]`` for one
        per row (broadcast over positions); None when every coefficient is zero (nothing is hooked then)."""
        if coeffs is None or not np.any(np.asarray(coeffs)):
            return None
        if np.ndim(coeffs) == 1:
            return list(self.delta(coeffs))
        # Per-row steering: each row's addition computed alone (exactly what that steering adds to a batch of one),
        # [layers, batch, 1, hidden], broadcast over positions.
        return list(torch.stack([self.delta(row) for row in coeffs], dim=1)[:, :, None, :])

    @contextmanager
    def applied(self, additions: list[torch.Tensor] | None) -> Iterator[None]:
        """Within the context, forwards of the model get ``additions`` (from ``additions``; None: untouched)."""
        if additions is None:
            yield
            return
        with push(self.model, self.bundle.chosen_layers, additions):
            yield

    @contextmanager
    def steer(self, coeffs: np.ndarray | torch.Tensor | None) -> Iterator[None]:
        """Within the context, forwards of the model are steered by ``coeffs`` (None/zeros: untouched)."""
        with self.applied(self.additions(coeffs)):
            yield
