"""Summarise py-spy collapsed stacks (``--format raw``) by function.

Prints, for the functions that appear most, the share of samples in which the
function is on the stack (inclusive) and at the top (self). Idle frames of
Huey's consumer (waiting on the queue, sleeping) are listed like any other, so
the table also shows how busy the worker threads were.

Usage::

    python benchmarks/profile_summary.py benchmarks/results/worker_redis_postgresql.folded
        [--top 40] [--grep flask_webhooks]
"""

from __future__ import annotations

import argparse
import collections
import re

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    """``func (file:line)`` with the site-packages prefix cut off."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    path = path.replace("/work/main/", "")
    return f"{m.group('func')} ({path})"


def summarise(path: str, top: int, grep: str | None) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = [short(fr) for fr in stack.split(";") if fr]
            # The first frame is the thread name ("process 123:..." / "thread ...").
            frames = [fr for fr in frames if not fr.startswith(("process ", "thread "))]
            total += count
            for fr in set(frames):
                inclusive[fr] += count
            if frames:
                own[frames[-1]] += count
    print(f"{total} samples in {path}")
    print(f"{'incl %':>7} {'self %':>7}  function")
    shown = 0
    for fr, n in inclusive.most_common():
        if grep and grep not in fr:
            continue
        print(f"{100 * n / total:7.1f} {100 * own[fr] / total:7.1f}  {fr}")
        shown += 1
        if shown >= top:
            break
    print("\nself time, top functions:")
    for fr, n in own.most_common(top):
        print(f"{100 * n / total:7.1f}  {fr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--grep", default=None)
    args = parser.parse_args()
    summarise(args.path, args.top, args.grep)


if __name__ == "__main__":
    main()
