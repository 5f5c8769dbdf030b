"""``emolab simulate``: run an experiment spec against a steering server (or one it starts), report it.

    emolab simulate list
    emolab simulate run risk --serve-model smollm2 --serve-vectors vectors/smollm2 --output runs/sim-risk
    emolab simulate run my_spec.yaml --base-url http://127.0.0.1:8000/v1 --output runs/sim-mine
    emolab simulate report runs/sim-risk
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emolab.cli.common import UsageError, number_list, positive_int, word_list

__all__ = ["add_simulate", "spec_with_overrides"]

OVERRIDE_FLAGS = {"conditions.emotions": "--emotions", "conditions.alphas": "--alphas", "personas": "--personas",
                  "personas.sample": "--personas", "seeds": "--seeds", "turns": "--turns",
                  "sampling.temperature": "--temperature", "answer_prefix": "--answer-prefix",
                  "number_readout": "--number-readout"}


def add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="emotion-steered agent simulations and behavioural experiments")
    inner = p.add_subparsers(dest="simulate_command", required=True)
    listing = inner.add_parser("list", help="the experiments shipped with emolab")
    listing.set_defaults(func=run_list)

    run = inner.add_parser("run", help="run (or resume) an experiment; every trial is logged as it completes")
    run.add_argument("spec", help="a spec file (YAML or JSON) or a shipped experiment's name (emolab simulate list)")
    run.add_argument("--output", default=None, help="run folder (default runs/sim-<name>); an existing one resumes")
    run.add_argument("--base-url", default=None, help="a running steering server (else --serve-model/--serve-vectors)")
    run.add_argument("--api-key", default=None, help="bearer key of the server (default $EMOLAB_API_KEY)")
    run.add_argument("--serve-model", default=None, help="start emolab serve for this model (with --serve-vectors)")
    run.add_argument("--serve-vectors", default=None, help="bundle of the started server")
    run.add_argument("--backend", default="auto", choices=["auto", "vllm", "hf"], help="backend of the started server")
    run.add_argument("--server-arg", action="append", default=[], help="extra argument for emolab serve (repeatable)")
    run.add_argument("--emotions", type=word_list, default=None, help="override conditions.emotions (comma-separated)")
    run.add_argument("--alphas", type=number_list("--alphas"), default=None, help="override conditions.alphas")
    run.add_argument("--personas", type=positive_int("--personas"), default=None, help="keep the first N personas (drawn from a population: draw N; the first N of any "
                     "larger draw)")
    run.add_argument("--seeds", type=number_list("--seeds", int), default=None, help="override seeds")
    run.add_argument("--turns", type=positive_int("--turns"), default=None, help="override turns (conversations)")
    run.add_argument("--temperature", type=float, default=None,
                     help="override sampling.temperature (> 0: each seed samples its own replicate)")
    run.add_argument("--answer-prefix", default=None, metavar="TEXT",
                     help="override answer_prefix: the reply's first words, continued by the model (\"\" for none)")
    run.add_argument("--number-readout", default=None, choices=["text", "distribution"],
                     help="override number_readout: distribution also reads the model's probability of every amount "
                          "(needs an answer_prefix)")
    run.add_argument("--limit", type=positive_int("--limit"), default=None,
                     help="run at most N of the trials still owed, then stop (resumable)")
    run.add_argument("--no-judge", action="store_true",
                     help="conversations: log replies unjudged (the report judges them later); not with state.rule decay")
    run.add_argument("--no-report", action="store_true", help="skip report.md and the plots")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=run_simulate)

    report = inner.add_parser("report", help="report.md, tables/*.csv and plots/*.png of a run folder")
    report.add_argument("folder")
    report.add_argument("--output", default=None, help="where to write (default: the run folder)")
    report.add_argument("--by", default=None, metavar="ATTRIBUTE",
                        help="split every effect by this attribute of the personas (drawn from a population) and "
                             "test whether it differs between the levels")
    report.set_defaults(func=run_report)


def run_list(args: argparse.Namespace) -> int:
    from emolab.simulate.spec import ExperimentSpec, shipped_specs

    for name, path in shipped_specs().items():
        spec = ExperimentSpec.load(path)
        print(f"{name:<12} {spec.kind:<13} {' '.join(spec.description.split())[:90]}")
    return 0


def spec_with_overrides(source: str, args: argparse.Namespace) -> Any:
    """The spec named on the command line, with the flags' overrides applied."""
    from emolab.simulate.spec import ExperimentSpec, SpecError

    spec = ExperimentSpec.load(source)
    try:
        return spec.with_overrides(emotions=args.emotions, alphas=args.alphas, personas=args.personas,
                                   seeds=args.seeds, turns=args.turns, temperature=args.temperature,
                                   answer_prefix=args.answer_prefix, number_readout=args.number_readout)
    except SpecError as exc:  # an override at fault: name its flag
        flag = OVERRIDE_FLAGS.get((exc.field or "").split("[")[0])
        if flag is None:
            raise
        raise UsageError(f"{flag}: {exc.message}") from None


@contextlib.contextmanager
def _server(args: argparse.Namespace) -> Iterator[str]:
    if args.base_url:
        yield args.base_url
        return
    if not (args.serve_model and args.serve_vectors):
        raise UsageError("give --base-url, or --serve-model and --serve-vectors to start a server")
    from emolab.serve.launch import free_port, launch_server, log_tail, stop_server, wait_for_health

    port = free_port()
    proc = launch_server(vectors=args.serve_vectors, model=args.serve_model, port=port, backend=args.backend,
                         api_key=args.api_key, extra_args=args.server_arg)
    try:
        health = wait_for_health(f"http://127.0.0.1:{port}", timeout=900, process=proc)
        print(f"started emolab serve ({health.get('backend', '?')} backend) on port {port}; log {proc.log_path}")
        yield f"http://127.0.0.1:{port}/v1"
    except Exception:
        print(log_tail(proc))
        raise
    finally:
        stop_server(proc)


def run_simulate(args: argparse.Namespace) -> int:
    from emolab.simulate import SimulationError, run_experiment, write_report

    spec = spec_with_overrides(args.spec, args)
    output = Path(args.output or f"runs/sim-{spec.name}")
    with _server(args) as base_url:
        try:
            log = run_experiment(spec, output, base_url=base_url, api_key=args.api_key,
                                 progress=not args.no_progress, limit=args.limit,
                                 judge=None if args.no_judge else "auto")
        except SimulationError:
            print(f"trials logged so far are kept in {output}/trials.jsonl")
            raise
    print(f"{len(log.done)} of {log.meta.get('n_trials')} trials logged in {output}/trials.jsonl")
    if not args.no_report:
        print(f"report: {write_report(output)}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from emolab.simulate import write_report

    folder = Path(args.folder)
    if not (folder / "run.json").is_file():
        raise UsageError(f"{folder}: not a run folder (no run.json)")
    print(f"report: {write_report(folder, args.output, by=args.by)}")
    return 0
