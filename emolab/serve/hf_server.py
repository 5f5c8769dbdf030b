"""Run the HF backend: load the model and the bundle, build the app, serve it with uvicorn."""

from __future__ import annotations

from emolab.core.bundle import EmotionBundle
from emolab.serve.settings import ServeSettings

__all__ = ["run_hf_server"]


def run_hf_server(settings: ServeSettings, *, model: str, host: str, port: int, api_key: str | None,
                  dtype: str = "auto", device: str = "auto", max_model_len: int | None = None,
                  max_queue: int = 64, log_level: str = "info") -> None:
    """Serve until interrupted. The bundle is checked against the model before the port opens."""
    import uvicorn

    from emolab.serve.hf_app import create_app
    from emolab.serve.hf_backend import HFBackend

    bundle = EmotionBundle.load(settings.vectors, load_full_sweep=False)
    alpha_scale = bundle.resolve_alpha_scale(settings.alpha_scale)
    backend = HFBackend.load(model, bundle, dtype=dtype, device=device, alpha_scale=alpha_scale,
                             max_model_len=max_model_len, max_queue=max_queue)
    app = create_app(backend, bundle, served_model_names=settings.served_model_names, api_key=api_key,
                     limits=settings.limits, alpha_scale=alpha_scale)
    print(f"emolab serve: HF backend, model {settings.served_model_names[0]} ({backend.model.dtype}, {backend.device}), "
          f"bundle {settings.vectors} ({len(bundle.emotions)} emotions, layers {bundle.chosen_layers}), "
          f"alpha scale {alpha_scale}, auth {'on' if api_key else 'off'}, http://{host}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
