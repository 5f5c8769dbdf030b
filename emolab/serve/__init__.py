"""Serving: the OpenAI-compatible HTTP contract both backends share, and the Hugging Face backend.

``contract`` (auth, errors, payloads) and ``schema`` (the one validation path of a generation
request) are used by the HF app here and by the vLLM middleware in ``emolab.fastpath``;
``settings`` is a server's configuration; ``launch`` starts and awaits server processes.
"""

from emolab.serve.launch import free_port, launch_server, stop_server, wait_for_health
from emolab.serve.settings import ServeSettings

__all__ = ["ServeSettings", "free_port", "launch_server", "stop_server", "wait_for_health"]
