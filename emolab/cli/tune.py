"""``emolab tune``: choose each emotion's vectors, layers and alpha by measured steering effect."""

from __future__ import annotations

import argparse
from pathlib import Path

from emolab.cli.common import UsageError, number_list, positive_int, word_list

__all__ = ["add_tune"]


def add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="tune method x layers x alpha per emotion on tuning prompts, report held-out, "
                                    "write a new bundle")
    p.add_argument("--bundle", action="append", default=None, dest="sources",
                   help="bundle folder with a full sweep (repeat for several vector methods)")
    p.add_argument("--output", default=None, help="new bundle folder (never an input or a tracked folder)")
    p.add_argument("--evaluate", default=None, metavar="TUNED_BUNDLE",
                   help="only evaluate a tuned bundle (read-only) at its recommended alphas on the held-out prompts")
    p.add_argument("--report", default=None, help="folder for report.json and tables.md (default runs/tune-<name>)")
    p.add_argument("--markdown", default=None, help="also write the held-out Markdown (docs/steering-effect.md body) "
                   "and its plots (img/steering-effect-*.png beside it)")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--emotions", type=word_list, default=None, help="comma-separated subset (default: all)")
    p.add_argument("--windows", default="12-14,13,10-18,16-18", help="layer windows and single layers, e.g. 12-14,13")
    p.add_argument("--pushes", type=number_list("--pushes", minimum=0.001), default=[1.5, 2.25, 3.0, 3.75],
                   help="total push per condition: alpha x layers in the window (normalized scale)")
    p.add_argument("--variants", type=word_list, default=["plain"],
                   help="plain and/or composites minus-<emotion>-<weight> (unit(v) - weight x unit(v_other))")
    p.add_argument("--search-prompts", type=positive_int("--search-prompts"), default=24)
    p.add_argument("--confirm-top", type=positive_int("--confirm-top"), default=3)
    p.add_argument("--confirm-prompts", type=positive_int("--confirm-prompts"), default=None,
                   help="confirm on the first N tuning prompts (default all)")
    p.add_argument("--heldout-prompts", type=positive_int("--heldout-prompts"), default=None,
                   help="report on the first N held-out prompts (default all)")
    p.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=40)
    p.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto",
                   help="auto: vLLM when installed and its fast path serves the model, else the HF loop")
    p.add_argument("--prompt-style", choices=["auto", "chat", "continuation"], default="auto",
                   help="chat: user turns through the chat template; continuation: texts the model continues (base "
                        "models); auto: chat when the model has a chat template")
    p.add_argument("--compare-hf", action="store_true", help="held-out stage: also time the HF loop")
    p.add_argument("--no-heldout", dest="heldout", action="store_false")
    p.add_argument("--threads", type=positive_int("--threads"), default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_tune_cli)


def run_tune_cli(args: argparse.Namespace) -> int:
    from emolab.evaluate.tune import TuneConfig, evaluate_tuned, run_tune
    from emolab.evaluate.tune_report import save_tune_report, write_tune_markdown

    args.flags = {"sources": "--bundle", "bundle": "--evaluate" if args.evaluate else "--bundle"}
    if args.evaluate is None and not (args.sources and args.output):
        raise UsageError("give --bundle (one or more) and --output, or --evaluate TUNED_BUNDLE")
    if args.evaluate is not None and (args.sources or args.output):
        raise UsageError("--evaluate reads one tuned bundle: drop --bundle and --output")
    config = TuneConfig(
        sources=args.sources or [], output=args.output or "", model=args.model, emotions=args.emotions, windows=args.windows,
        pushes=args.pushes, variants=args.variants, search_prompts=args.search_prompts, confirm_top=args.confirm_top,
        confirm_prompts=args.confirm_prompts, heldout_prompts=args.heldout_prompts,
        max_new_tokens=args.max_new_tokens, backend=args.backend, prompt_style=args.prompt_style, heldout=args.heldout, compare_hf=args.compare_hf,
        threads=args.threads, seed=args.seed,
    )
    def log(line: str) -> None:
        print(line, flush=True)

    if args.evaluate:
        report = evaluate_tuned(args.evaluate, config, progress=log)
        name = f"effect-{Path(args.evaluate).name}"
    else:
        report = run_tune(config, progress=log)
        name = f"tune-{Path(args.output).name}"
    folder = save_tune_report(report, args.report or f"runs/{name}")
    print((folder / "tables.md").read_text())
    if args.markdown and "heldout" in report:
        print(f"wrote {write_tune_markdown(report, args.markdown)} (plots in img/ beside it)")
    done = f"tuned bundle in {args.output}; " if not args.evaluate else ""
    print(f"{done}report in {folder}; {report['timings']['total_s'] / 60:.1f} min")
    return 0
