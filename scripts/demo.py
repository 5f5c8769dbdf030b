#!/usr/bin/env python3
"""``make demo``: the notebook-driven main job on the embedded default, offline.

extract (papermill 01) -> inspect (papermill 02, plots saved as PNG) -> serve (a real
``emolab serve`` subprocess) -> ``emolab test-http`` (baseline + one steered reply per emotion).
Executed notebooks, plots, the bundle and the server log go to ``--out`` (default runs/demo).

The server steers with the committed, tuned bundle ``vectors/<model>`` when there is one with
``alpha_recommendations`` (its layers, methods and alphas were chosen by ``emolab tune`` for their
measured effect; test-http then sends each emotion at its recommended alpha on the bundle's
normalized scale); otherwise, or with ``--serve-vectors extracted``, with the bundle just extracted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def papermill(stem: str, out_dir: Path, **parameters) -> Path:
    import papermill as pm

    out = out_dir / f"{stem}.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"), str(out), parameters=parameters,
                        kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    return out


def serving_bundle(choice: str | None, model: str, extracted: Path) -> Path:
    """The bundle the demo serves: ``choice`` (a folder or 'extracted'), else the tuned ``vectors/<model>``."""
    from emolab.core.bundle import EmotionBundle

    if choice == "extracted":
        return extracted
    if choice:
        return Path(choice).resolve()
    committed = ROOT / "vectors" / model
    if (committed / "metadata.json").is_file() and EmotionBundle.load(committed).metadata.get("alpha_recommendations"):
        return committed
    return extracted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-per-class", type=int, default=80, help="GoEmotions examples per emotion (bundled data)")
    parser.add_argument("--layers", default="mid")
    parser.add_argument("--backend", default="hf", help="serve backend: hf, vllm or auto")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--serve-vectors", default=None,
                        help="bundle to serve: a folder, or 'extracted' (default: the tuned vectors/<model> if any)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    args = parser.parse_args(argv)

    from emolab.core.bundle import EmotionBundle
    from emolab.serve.launch import free_port, launch_server, stop_server, wait_for_health

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir, plots_dir = out / "bundle", out / "plots"
    times: dict[str, float] = {}
    start = time.perf_counter()

    print(f"[1/4] extract: papermill notebooks/01_extract.ipynb ({args.model}, {args.max_per_class} per class)", flush=True)
    t0 = time.perf_counter()
    papermill("01_extract", out, model=args.model, layers=args.layers, data="bundled",
              max_per_class=args.max_per_class, batch_size=32, output=str(bundle_dir), progress=False)
    times["extract"] = time.perf_counter() - t0
    bundle = EmotionBundle.load(bundle_dir)
    print(f"      bundle {bundle_dir}: layers {bundle.chosen_layers}, "
          f"mean AUC {bundle.metadata['chosen_mean_auc']:.3f} ({times['extract']:.0f} s)", flush=True)

    print("[2/4] inspect: papermill notebooks/02_inspect.ipynb", flush=True)
    t0 = time.perf_counter()
    papermill("02_inspect", out, bundle_path=str(bundle_dir), plots_dir=str(plots_dir))
    times["inspect"] = time.perf_counter() - t0
    for png in sorted(plots_dir.glob("*.png")):
        print(f"      {png}")

    serve_dir = serving_bundle(args.serve_vectors, args.model, bundle_dir)
    port = args.port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    print(f"[3/4] serve: emolab serve --backend {args.backend} --vectors {serve_dir} on {base_url}", flush=True)
    t0 = time.perf_counter()
    server = launch_server(vectors=serve_dir, model=args.model, port=port, backend=args.backend,
                           log_path=out / "serve.log")
    try:
        wait_for_health(base_url, timeout=600, process=server)
        times["serve_start"] = time.perf_counter() - t0
        print(f"      healthy after {times['serve_start']:.0f} s (log {out / 'serve.log'})", flush=True)

        print("[4/4] test-http: a baseline and one steered reply per emotion", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "emolab.cli", "test-http", "--base-url", f"{base_url}/v1",
                                "--max-tokens", str(args.max_tokens)], env=dict(os.environ))
        times["test_http"] = time.perf_counter() - t0
    finally:
        stop_server(server)
    times["total"] = time.perf_counter() - start
    print("demo wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"executed notebooks and plots: {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
