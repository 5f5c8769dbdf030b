"""The simulation run's domain error (a spec that cannot load is ``emolab.simulate.spec.SpecError``)."""

from __future__ import annotations

from emolab.core.errors import EmolabError

__all__ = ["SimulationError"]


class SimulationError(EmolabError, RuntimeError):
    """A run that could not finish: the server refused a request, or trials were lost (run again to retry)."""
