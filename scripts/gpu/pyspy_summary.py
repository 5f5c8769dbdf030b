"""Summarize a py-spy ``record -f raw`` profile (collapsed stacks with counts): per process, where the time goes.

    python scripts/gpu/pyspy_summary.py PROFILE.txt [--top 25] [--match detok,serialize,...]

py-spy with ``--subprocesses`` puts ``process PID:"COMMAND"`` frames first (a child's under its parent's); each process's
samples are shown apart: its share of all samples, its busiest leaf functions (self time) and, for every --match
word, the share of its samples whose stack holds a frame with that word (inclusive time).
"""

from __future__ import annotations

import argparse
import collections
import re

__all__ = ["main"]

_PROCESS = re.compile(r'^process (\d+):"?(.*?)"?$')


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="")
    args = parser.parse_args()
    per_process: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    words = [w for w in args.match.split(",") if w]
    with open(args.profile, errors="replace") as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = _frames(stack)
            process = "all"
            while frames and (m := _PROCESS.match(frames[0])):  # a child's stack nests under its parents' frames
                process = f"{m.group(1)} {m.group(2)[:70]}"
                frames = frames[1:]
            # A thread frame ("thread (0x..): name") may come next; keep the thread name with the process.
            if frames and frames[0].startswith("thread "):
                frames = frames[1:]
            totals[process] += n
            if frames:
                per_process[process][frames[-1]] += n
            for word in words:
                if any(word in f for f in frames):
                    inclusive[process][word] += n
    grand = sum(totals.values()) or 1
    for process, samples in totals.most_common():
        print(f"\n== {process}: {samples} samples ({samples / grand:.1%} of all)")
        for word in words:
            print(f"   stacks with {word!r}: {inclusive[process][word] / samples:.1%}")
        for frame, n in per_process[process].most_common(args.top):
            print(f"   {n / samples:6.1%}  {frame[:150]}")


if __name__ == "__main__":
    main()
