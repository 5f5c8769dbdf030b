"""Run the HF backend: load the model and the bundle, build the app, serve it with uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from emolab.core.bundle import EmotionBundle
from emolab.core.names import served_model_names
from emolab.serve.settings import ServeSettings, check_bundle_model

__all__ = ["run_hf_server"]

logger = logging.getLogger("emolab.hf")


def run_hf_server(settings: ServeSettings, *, model: str, host: str, port: int, api_key: str | None,
                  dtype: str = "auto", device: str = "auto", max_model_len: int | None = None,
                  max_queue: int = 64, load_format: str = "auto",
                  log_level: str = "info", warn: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted. The bundle is checked against the model before the port opens.

    A bundle extracted from another model (by name) is refused under ``settings.model_check == "strict"``;
    under ``warn`` the mismatch goes to ``warn`` (default: this module's logger). ``settings.chat_template``
    (a file) replaces the tokenizer's chat template; without any, chat requests get a 400.
    """
    import uvicorn

    from emolab.serve.hf_app import create_app
    from emolab.serve.hf_backend import HFBackend

    bundle = EmotionBundle.load(settings.vectors, load_full_sweep=False)
    problem = check_bundle_model(bundle, model, settings.model_check)  # before the model loads
    if problem:
        (warn or logger.warning)(problem)
    alpha_scale = bundle.resolve_alpha_scale(settings.alpha_scale)
    backend = HFBackend.load(model, bundle, dtype=dtype, device=device, alpha_scale=alpha_scale,
                             max_model_len=max_model_len, max_queue=max_queue, max_batch=settings.hf_max_batch,
                             max_batch_tokens=settings.hf_max_batch_tokens, load_format=load_format)
    if settings.chat_template:  # the user's template replaces (or supplies) the model's own
        backend.tokenizer.chat_template = Path(settings.chat_template).read_text()
    names = settings.served_model_names or served_model_names(model)
    app = create_app(backend, bundle, served_model_names=names, api_key=api_key, limits=settings.limits,
                     alpha_scale=alpha_scale)
    print(f"emolab serve: HF backend, model {names[0]} ({backend.model.dtype}, {backend.device}; answers to "
          f"{', '.join(names)}), "
          f"bundle {settings.vectors} ({len(bundle.emotions)} emotions, layers {bundle.chosen_layers}), "
          f"alpha scale {alpha_scale}, auth {'on' if api_key else 'off'}, http://{host}:{port}/v1", flush=True)
    if backend.scheduler is not None:
        print(f"emolab serve: continuous batching of up to {settings.hf_max_batch} requests holding up to "
              f"{settings.hf_max_batch_tokens} key/value positions; at most {max_queue} queued or running", flush=True)
    elif settings.hf_max_batch > 1:
        print(f"emolab serve: warning: serving one request at a time: {backend.batching_note}", file=sys.stderr,
              flush=True)
    else:
        print("emolab serve: one request at a time (max batch 1)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
