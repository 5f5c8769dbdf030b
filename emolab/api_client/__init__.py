"""Clients of a steering server: ``SteeringClient`` / ``AsyncSteeringClient`` and the ``test-http`` probe."""

from emolab.api_client.client import DEFAULT_BASE_URL, AsyncSteeringClient, SteeringClient, SteeringSpec, v1_url
from emolab.api_client.probe import DEFAULT_PROMPT, ProbeResult, probe

__all__ = [
    "DEFAULT_BASE_URL", "DEFAULT_PROMPT", "AsyncSteeringClient", "ProbeResult", "SteeringClient", "SteeringSpec",
    "probe", "v1_url",
]
