"""In-process steering of a transformers model: the reference semantics every backend reproduces.

``HFSteerer`` adds ``sum_e c[e] * v[e, L]`` at the output of each steered block; ``generate`` is the
one steered generate loop (the HF backend, ``emolab eval`` and the notebook widgets use it).
"""

from emolab.steer.generate import generate, stop_token_ids
from emolab.steer.hf import HFSteerer

__all__ = ["HFSteerer", "generate", "stop_token_ids"]
