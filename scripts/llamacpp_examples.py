"""Steered vs plain continuations of SmolLM2 in llama.cpp, one per emotion, for docs/llamacpp.md.

Exports each emotion of a bundle as a control-vector file (emolab export-gguf), runs the packaged
SmolLM2-135M-Instruct Q4_1 GGUF in libllama with and without the file, greedy, and prints a Markdown
table; ``--compare-hf`` adds emolab's transformers backend (fp32) steered the same way.

    python scripts/llamacpp_examples.py --compare-hf      # each emotion at the bundle's recommended alpha
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="vectors/smollm2")
    parser.add_argument("--alpha", type=float, default=None,
                        help="one alpha for every emotion (default: the bundle's recommended alphas, else 1)")
    parser.add_argument("--alpha-scale", choices=["raw", "normalized"], default="normalized")
    parser.add_argument("--prompt", default="Tell me about your day in two sentences.")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--compare-hf", action="store_true", help="also steer emolab's HF backend (fp32)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (one is fastest on busy shared cores)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from emolab.core.bundle import EmotionBundle
    from emolab.core.models import chat_prompt_ids, resolve_model
    from emolab.core.offline import smollm2_gguf
    from emolab.export import export_gguf
    from emolab.export.llamacpp import LlamaCppModel

    bundle = EmotionBundle.load(args.bundle)
    recommended = bundle.metadata.get("alpha_recommendations") or {}
    if recommended and bundle.metadata.get("alpha_recommendations_scale", args.alpha_scale) != args.alpha_scale:
        recommended = {}  # recommendations on another scale do not carry over

    def alpha_of(emotion: str) -> float:
        return args.alpha if args.alpha is not None else float(recommended.get(emotion, 1.0))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    prompt_ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": args.prompt}])

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True).replace("\n", " ").replace("|", "\\|").strip()

    hf = None
    if args.compare_hf:
        import numpy as np
        import torch

        from emolab.core.models import load_model
        from emolab.steer import HFSteerer

        torch.set_num_threads(args.threads)
        model, _ = load_model("smollm2", dtype="float32", device="cpu")
        steerer = HFSteerer(model, bundle, basis=bundle.steering_basis(args.alpha_scale))

        def hf(emotion: str | None) -> str:
            coeffs = np.zeros(len(bundle.emotions), np.float32)
            if emotion:
                coeffs[bundle.emotions.index(emotion)] = alpha_of(emotion)
            with torch.no_grad(), steerer.steer(coeffs):
                out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=args.max_new_tokens, do_sample=False)
            return text(out[0, len(prompt_ids):].tolist())

    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, LlamaCppModel(smollm2_gguf(), n_ctx=256, n_threads=args.threads) as llama:
        plain = text(llama.generate_greedy(prompt_ids, args.max_new_tokens))
        rows.append(("(none)", plain, hf(None) if hf else None))
        for emotion in bundle.emotions:
            path = export_gguf(bundle, {emotion: alpha_of(emotion)}, Path(tmp) / f"{emotion}.gguf", scale=args.alpha_scale)
            llama.set_control_vectors([(path, 1.0)])
            steered = text(llama.generate_greedy(prompt_ids, args.max_new_tokens))
            llama.clear_control_vectors()
            rows.append((f"{emotion}={alpha_of(emotion):g}", steered, hf(emotion) if hf else None))
    print(f"prompt: {args.prompt!r}; {args.alpha_scale} alpha scale; greedy, {args.max_new_tokens} new tokens; "
          f"{time.perf_counter() - started:.1f} s\n")
    header = "| steering | llama.cpp (Q4_1, control vector) |" + (" emolab HF backend (fp32) |" if hf else "")
    print(header)
    print("|---|---|" + ("---|" if hf else ""))
    for name, llama_text, hf_text in rows:
        print(f"| {name} | {llama_text} |" + (f" {hf_text} |" if hf else ""))


if __name__ == "__main__":
    main()
