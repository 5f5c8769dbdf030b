"""Per-row steering with controls and readout for transformers forwards: the HF side of ``core.steering_ops``.

``RowSteering`` holds a bundle's control tables on the model's device; ``tables(steerings)`` turns one
``Steering`` per batch row (None: plain) into row tables (row 0 of the tables is the plain model), and
``hooked(tables, token_rows, readout)`` runs forwards with a hook on every chosen block that applies
``steer_rows`` to each position, each position pointing at its row (0: untouched, which is how padding and
out-of-scope positions are left alone). With ``readout`` given, every chosen block's projections *before*
this forward's steering at that block are handed to it (``[batch, positions, n_emotions]`` float32).

Which positions a row steers follows its scope: ``token_rows`` says, per forward (``scope_rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.models import decoder_layers
from emolab.core.steering import Steering
from emolab.core.steering_ops import ControlTables, steer_rows

__all__ = ["Readout", "RowSteering", "RowTables", "TokenRows", "scope_rows"]

Readout = Callable[[int, torch.Tensor], None]  # (index of the chosen layer, [batch, positions, n] projections)
TokenRows = torch.Tensor | Callable[[int, int], torch.Tensor]  # [batch, positions] rows, or made per forward


class RowTables:
    """Device tables of one set of rows: row ``r + 1`` is ``steerings[r]``; scopes kept for ``scope_rows``."""

    def __init__(self, add: torch.Tensor, solve: torch.Tensor | None, target: torch.Tensor | None,
                 scopes: list[str | None]) -> None:
        self.add, self.solve, self.target, self.scopes = add, solve, target, scopes


def scope_rows(scopes: Sequence[str | None], phase: str, positions: int, device: torch.device,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, positions]`` row index of every position of a forward: row ``b + 1`` where row ``b`` steers in
    this ``phase`` (``"prompt"`` or ``"generated"``) and ``mask`` (if given) marks a real token, else 0."""
    active = [scope is not None and scope in ("all", phase) for scope in scopes]
    ids = torch.tensor([b + 1 if on else 0 for b, on in enumerate(active)], dtype=torch.long, device=device)
    rows = ids[:, None].expand(len(scopes), positions)
    return rows * mask.to(torch.long) if mask is not None else rows.clone()


class RowSteering:
    """A bundle's steering operator for a transformers model: tables once, hooks per forward."""

    def __init__(self, model: torch.nn.Module, bundle: EmotionBundle, basis: np.ndarray) -> None:
        self.model, self.bundle = model, bundle
        self.blocks = decoder_layers(model)
        self.layers = list(bundle.chosen_layers)
        self.n = int(np.asarray(basis).shape[1])  # the emotions, and any derived directions after them
        self.controls = ControlTables.of(basis)
        device = next(model.parameters()).device
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        self.device = device
        self.basis, self.units, self.cross = t(self.controls.basis), t(self.controls.units), t(self.controls.cross)
        self._rows: dict[Steering, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}

    def _row(self, steering: Steering) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        if steering not in self._rows:  # a request's tables, solved once and reused at every step
            if len(self._rows) > 4096:
                self._rows.clear()
            plan = steering.plan(self.n)
            solve, target = self.controls.constraint_row(plan) if plan.constrained.any() else (None, None)
            self._rows[steering] = (plan.add, solve, target)
        return self._rows[steering]

    def tables(self, steerings: Sequence[Steering | None]) -> RowTables:
        """Tables for these rows (None or an empty ``Steering``: the plain model, scope None)."""
        rows = [self._row(s) if s else None for s in steerings]
        add = np.zeros((len(rows) + 1, self.n), dtype=np.float32)
        held = any(r is not None and r[1] is not None for r in rows)
        solve = np.zeros((len(rows) + 1, len(self.layers), self.n, self.n), dtype=np.float32) if held else None
        target = np.zeros((len(rows) + 1, len(self.layers), self.n), dtype=np.float32) if held else None
        for i, row in enumerate(rows, start=1):
            if row is None:
                continue
            add[i] = row[0]
            if held and row[1] is not None:
                solve[i], target[i] = row[1], row[2]
        t = lambda a: None if a is None else torch.as_tensor(a, device=self.device)  # noqa: E731
        scopes = [s.scope if s else None for s in steerings]
        return RowTables(t(add), t(solve), t(target), scopes)

    @contextmanager
    def hooked(self, tables: RowTables | None, token_rows: TokenRows | None,
               readout: Readout | None = None) -> Iterator[None]:
        """Forwards inside are steered (``token_rows``: ``[batch, positions]``, or a function of the forward's
        ``(batch, positions)`` giving it) and/or read (``readout``).

        Nothing is hooked when there is nothing to do (no steered position and no readout)."""
        steering = tables is not None and token_rows is not None and (callable(token_rows) or bool(token_rows.any()))
        if not steering and readout is None:
            yield
            return
        handles = []
        for index, layer in enumerate(self.layers):
            handles.append(self.blocks[layer].register_forward_hook(self._hook(index, tables if steering else None,
                                                                               token_rows, readout)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, index: int, tables: RowTables | None, token_rows: TokenRows | None,
              readout: Readout | None):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            batch, positions, width = hidden.shape
            flat = hidden.reshape(-1, width)
            if tables is None:
                if readout is not None:
                    readout(index, (flat.float() @ self.units[index].T).view(batch, positions, self.n))
                return None
            rows = (token_rows(batch, positions) if callable(token_rows) else token_rows).reshape(-1)
            steered, before = steer_rows(flat, rows, tables.add, self.basis[index], self.units[index],
                                         self.cross[index], None if tables.solve is None else tables.solve[:, index],
                                         None if tables.target is None else tables.target[:, index])
            if readout is not None:
                readout(index, before.view(batch, positions, self.n))
            steered = steered.view(batch, positions, width)
            return (steered, *output[1:]) if isinstance(output, (tuple, list)) else steered

        return hook
