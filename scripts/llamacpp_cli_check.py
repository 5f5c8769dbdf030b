"""Check exported control vectors in a real llama.cpp command-line tool against emolab's libllama runner.

``llama-completion --control-vector-scaled FILE:SCALE,...`` loads the files with llama.cpp's own ``common``
loader; ``emolab.export.llamacpp.LlamaCppModel`` builds the same buffer in Python (llama-cpp-python does
not ship ``common``). Greedy continuations of both must be identical: plain, one exported mix, and two
per-emotion files mixed by llama.cpp. Needs a llama.cpp build with ``llama-completion`` (not installed by
``make setup``; docs/llamacpp.md says how it was built here).

    python scripts/llamacpp_cli_check.py --llama-completion /path/to/llama.cpp/build/bin/llama-completion
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-completion", required=True, help="path of llama.cpp's llama-completion binary")
    parser.add_argument("--bundle", default="vectors/smollm2")
    parser.add_argument("--prompt", default="Tell me about your day in two sentences.")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from emolab.core.bundle import EmotionBundle
    from emolab.core.models import chat_prompt_ids, resolve_model
    from emolab.core.offline import smollm2_gguf
    from emolab.export import export_gguf, export_per_emotion
    from emolab.export.llamacpp import LlamaCppModel

    bundle = EmotionBundle.load(args.bundle)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    messages = [{"role": "user", "content": args.prompt}]
    # llama-completion -f drops the prompt file's final newline; give the runner the same tokens.
    prompt_ids = chat_prompt_ids(tokenizer, messages)[:-1]
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "prompt.txt").write_text(prompt_text)
        mix = export_gguf(bundle, {"fear": 1.0}, folder / "fear.gguf", scale="normalized")
        per = export_per_emotion(bundle, folder / "cvec", scale="normalized")
        cases = {
            "plain": [],
            "--control-vector-scaled fear.gguf:1.0": [(mix, 1.0)],
            "--control-vector-scaled cvec/fear.gguf:0.8,cvec/joy.gguf:0.4": [(per["fear"], 0.8), (per["joy"], 0.4)],
        }
        failures = 0
        with LlamaCppModel(smollm2_gguf(), n_ctx=256, n_threads=1) as llama:
            for name, files in cases.items():
                flags = ["--control-vector-scaled", ",".join(f"{path}:{scale:g}" for path, scale in files)] if files else []
                command = [args.llama_completion, "-m", str(smollm2_gguf()), "-f", str(folder / "prompt.txt"),
                           "-n", str(args.max_new_tokens), "--temp", "0", "-t", "1", "-c", "256", "-no-cnv",
                           "--no-display-prompt", "--simple-io", *flags]
                result = subprocess.run(command, capture_output=True, text=True, check=False)
                cli_text = result.stdout.strip()
                if files:
                    llama.set_control_vectors(files)
                ours = tokenizer.decode(llama.generate_greedy(prompt_ids, args.max_new_tokens), skip_special_tokens=True)
                llama.clear_control_vectors()
                same = cli_text == ours.strip()
                failures += not same
                print(f"{'same' if same else 'DIFFERENT'}  {name}\n  llama-completion: {cli_text!r}\n"
                      f"  emolab runner:    {ours.strip()!r}")
                if result.returncode != 0:
                    print(result.stderr[-2000:], file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
