"""``emolab eval``: measure what steering does (independent judge, fluency, recommended alphas), or, with
``--controls``, compare the steering controls (add, clamp, scopes) per emotion beside a prompted baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

from emolab.cli.common import UsageError, number_list, positive_int, word_list
from emolab.evaluate.controls import DEFAULT_CONTROLS
from emolab.evaluate.prompting import PROMPT_STYLES, stage_prompts
from emolab.evaluate.report import markdown_tables, save_report, write_recommendations
from emolab.evaluate.sweep import DEFAULT_PROMPTS, N_DEFAULT_CONTINUATIONS, EvalConfig, run_eval

__all__ = ["add_eval"]


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure what steering does: independent judge, fluency, recommended alphas")
    p.add_argument("--model", default="smollm2", help="model to steer (and to score perplexity with)")
    p.add_argument("--bundle", default="vectors/smollm2", help="bundle folder")
    p.add_argument("--emotions", default=None, help="comma-separated subset (default: all of the bundle's)")
    p.add_argument("--alphas", type=number_list("--alphas"), default=None,
                   help="comma-separated sweep (default 0.5,1,1.5,2); 0 (unsteered) is always added as the baseline")
    p.add_argument("--alpha-scale", choices=["raw", "normalized"], default=None,
                   help="alpha scale for in-process steering (default: the bundle's alpha_scale, else raw)")
    p.add_argument("--prompts", type=positive_int("--prompts"), default=None,
                   help=f"use the first N prompts (default all: {len(DEFAULT_PROMPTS)} built-in chat turns or "
                        f"{N_DEFAULT_CONTINUATIONS} texts to continue; 48 of a --prompt-set)")
    p.add_argument("--prompt-set", choices=["builtin", "tune", "heldout"], default=None,
                   help="builtin (the sweep's default) or the prompt style's tuning or held-out set (heldout: the "
                        "--controls default)")
    p.add_argument("--prompts-file", default=None, help="one prompt per line instead of a prompt set")
    p.add_argument("--prompt-style", choices=list(PROMPT_STYLES), default="auto",
                   help="chat: user turns through the chat template; continuation: texts the model continues "
                        "(/v1/completions; for base models); auto: chat when the model has a chat template")
    p.add_argument("--controls", type=word_list, default=None,
                   help="compare controls per emotion at the bundle's recommended alpha instead of sweeping alphas: "
                        "MODE[:LEVEL][@SCOPE], e.g. add,add@generated,clamp:matched,clamp:same@generated "
                        f"('default' = {','.join(DEFAULT_CONTROLS)})")
    p.add_argument("--no-prompted", dest="prompted", action="store_false",
                   help="--controls: leave out the prompted-emotion baseline")
    p.add_argument("--calibration-prompts", type=positive_int("--calibration-prompts"), default=8,
                   help="--controls: tuning prompts that calibrate the matched clamp level")
    p.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=40)
    p.add_argument("--samples", type=positive_int("--samples"), default=1, help="samples per prompt (>1 samples)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server", default=None, help="base URL of a running emolab server (else in-process transformers)")
    p.add_argument("--served-model", default=None, help="model name sent to the server")
    p.add_argument("--ppl-factor", type=float, default=2.0, help="recommendation: max perplexity / baseline")
    p.add_argument("--judge-train-per-class", type=positive_int("--judge-train-per-class"), default=500)
    p.add_argument("--judge-test-per-class", type=positive_int("--judge-test-per-class"), default=200)
    p.add_argument("--output", default=None, help="folder for report.json, tables.md and plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--write-recommendations", action="store_true",
                   help="write alpha_recommendations (with --controls: the adopted controls) into the bundle's "
                        "metadata.json (refused for a bundle git tracks)")
    p.set_defaults(func=run_eval_cli)


def _prompts(args: argparse.Namespace) -> list[str] | None:
    if args.prompts_file and args.prompt_set:
        raise UsageError("--prompts-file: give it or --prompt-set, not both")
    if args.prompts_file:
        try:
            prompts = [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise UsageError(f"--prompts-file: {exc}") from None
        if not prompts:
            raise UsageError(f"--prompts-file: {args.prompts_file} holds no prompt")
    else:
        prompts = None  # the built-in prompts or the set, of the prompt style (the model decides it)
    if prompts:
        available = len(prompts)
    elif _prompt_set(args) == "builtin":
        available = min(len(DEFAULT_PROMPTS), N_DEFAULT_CONTINUATIONS)  # both styles: 24
    else:
        available = min(len(stage_prompts(style, _prompt_set(args))) for style in ("chat", "continuation"))
    if args.prompts and args.prompts > available:
        raise UsageError(f"--prompts: only {available} prompts available, asked for {args.prompts}")
    return prompts


def _prompt_set(args: argparse.Namespace) -> str:
    return args.prompt_set or ("heldout" if args.controls is not None else "builtin")


def run_eval_cli(args: argparse.Namespace) -> int:
    prompts = _prompts(args)
    if args.controls is not None:
        return _controls_cli(args, prompts)
    if args.temperature < 0:
        raise UsageError("--temperature must be >= 0")
    if args.ppl_factor <= 1:
        raise UsageError("--ppl-factor must be > 1")
    emotions = [e.strip() for e in args.emotions.split(",") if e.strip()] if args.emotions else None
    config = EvalConfig(
        model=args.model, bundle=args.bundle, emotions=emotions, alphas=args.alphas or [0.5, 1.0, 1.5, 2.0],
        scale=args.alpha_scale, prompts=prompts, n_prompts=args.prompts,
        prompt_set=None if prompts or _prompt_set(args) == "builtin" else _prompt_set(args),
        prompt_style=args.prompt_style, max_new_tokens=args.max_new_tokens, samples=args.samples,
        temperature=args.temperature,
        batch_size=args.batch_size, seed=args.seed, server=args.server, served_model=args.served_model,
        ppl_factor=args.ppl_factor, judge_train_per_class=args.judge_train_per_class,
        judge_test_per_class=args.judge_test_per_class,
    )
    args.flags = {"n_prompts": "--prompts", "prompts": "--prompts-file"}
    report = run_eval(config)
    output = args.output or f"runs/eval-{Path(args.bundle).name}"
    save_report(report, output, plots=not args.no_plots)
    print(markdown_tables(report))
    print(f"judge test ROC-AUC (macro): {report['judge']['test_auc']['macro']}")
    print(f"alpha_recommendations ({report['scale']} scale): {report['alpha_recommendations']}")
    if args.write_recommendations:
        print(f"wrote recommendations into {write_recommendations(args.bundle, report)}")
    print(f"report in {output}")
    return 0


def _controls_cli(args: argparse.Namespace, prompts: list[str] | None) -> int:
    """``emolab eval --controls``: the controls comparison, in process, greedy, at the recommended alphas."""
    from emolab.evaluate.controls import ControlsConfig, run_controls
    from emolab.evaluate.controls_report import save_controls_report, write_control_recommendations
    from emolab.evaluate.selection import Limits

    clashes = [flag for flag, given in (("--alphas", args.alphas is not None), ("--alpha-scale", args.alpha_scale),
                                        ("--server", args.server), ("--samples", args.samples != 1),
                                        ("--temperature", args.temperature != 0)) if given]
    if clashes:
        raise UsageError(f"{clashes[0]}: --controls compares the controls in process, greedy, at the bundle's "
                         "recommended alphas; drop it")
    if args.ppl_factor <= 1:
        raise UsageError("--ppl-factor must be > 1")
    controls = [c for item in args.controls for c in (DEFAULT_CONTROLS if item == "default" else [item])]
    if not controls:
        raise UsageError("--controls: name at least one control, e.g. add,clamp:matched@generated")
    emotions = [e.strip() for e in args.emotions.split(",") if e.strip()] if args.emotions else None
    config = ControlsConfig(
        model=args.model, bundle=args.bundle, emotions=emotions, controls=controls, prompted=args.prompted,
        prompt_set=f"file {args.prompts_file}" if prompts else _prompt_set(args), prompts=prompts,
        n_prompts=args.prompts, prompt_style=args.prompt_style, calibration_prompts=args.calibration_prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        seed=args.seed, limits=Limits(ppl_factor=args.ppl_factor), judge_train_per_class=args.judge_train_per_class,
        judge_test_per_class=args.judge_test_per_class,
    )
    args.flags = {"n_prompts": "--prompts", "prompts": "--prompts-file", "prompt_set": "--prompt-set"}
    report = run_controls(config, progress=lambda line: print(line, flush=True))
    output = args.output or f"runs/controls-{Path(args.bundle).name}"
    markdown = save_controls_report(report, output, plots=not args.no_plots)
    print(markdown.read_text())
    if args.write_recommendations:
        print(f"wrote the adopted controls into {write_control_recommendations(args.bundle, report)}")
    print(f"report in {output}; {report['timings']['total_s'] / 60:.1f} min")
    return 0
