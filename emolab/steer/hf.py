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
    (one per row).
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

    @contextmanager
    def steer(self, coeffs: np.ndarray | torch.Tensor | None) -> Iterator[None]:
        """Within the context, forwards of the model are steered by ``coeffs`` (None/zeros: untouched)."""
        if coeffs is None or not np.any(np.asarray(coeffs)):
            yield
            return
        delta = self.delta(coeffs)
        if delta.ndim == 3:  # per-row steering: [layers, batch, hidden] -> broadcast over positions
            delta = delta[:, :, None, :]
        with push(self.model, self.bundle.chosen_layers, list(delta)):
            yield
