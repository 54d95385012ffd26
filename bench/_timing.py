"""Timing helpers of the benchmarks that must not put this checkout's ``src`` on the path first
(``_common`` does): the median of repeated calls, two segany versions timed in turns, and their
JSON output.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` in ms, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def print_json(result: dict, out: str | None, indent: int = 2) -> None:
    """Print ``result`` as JSON, and write it to the file ``out`` too when given."""
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def time_in_subprocess(timer: str, src: Path, *args: str) -> dict[str, float]:
    """Run the script ``timer`` (``python -c``) with ``src`` and ``args`` as its arguments; its last
    output line is a JSON object of times."""
    done = subprocess.run([sys.executable, "-c", timer, str(src), *args], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: timing {src} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Turns:
    """Times of the two versions: ``rounds["base"]`` and ``rounds["this"]``, one dict per round."""

    base_commit: str
    this_commit: str  # HEAD, marked when src/ has uncommitted changes
    rounds: dict[str, list[dict[str, float]]]

    def medians(self) -> dict[str, dict[str, float]]:
        keys = list(self.rounds["base"][0])
        return {v: {k: statistics.median(r[k] for r in runs) for k in keys} for v, runs in self.rounds.items()}

    def speedups(self) -> dict[str, float]:
        """Ratio of the medians over the rounds, base / this checkout."""
        m = self.medians()
        return {k: round(m["base"][k] / m["this"][k], 3) for k in m["base"]}


def in_turns(base: str, rounds: int, time_version: Callable[[Path], dict[str, float]]) -> Turns:
    """Time the earlier commit ``base`` (checked out in a temporary git worktree) and this checkout
    in turns, ``rounds`` times each, so that drifts of the host hit both: ``time_version(src)``
    times the version whose ``src`` directory it is given."""
    if rounds < 1:
        raise SystemExit("error: --rounds must be at least 1")
    git = ["git", "-C", str(REPO)]
    resolved = subprocess.run(
        [*git, "rev-parse", "--verify", f"{base}^{{commit}}"], check=False, capture_output=True, text=True
    )
    if resolved.returncode != 0:
        raise SystemExit(f"error: unknown commit {base!r}")
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()
    changed = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "src"], check=False).returncode
    turns = Turns(
        resolved.stdout.strip(), head + (" (with uncommitted changes)" if changed else ""), {"base": [], "this": []}
    )
    with tempfile.TemporaryDirectory(prefix="segany-ab-") as tmp:
        worktree = Path(tmp) / "base"
        subprocess.run([*git, "worktree", "add", "--detach", "-q", str(worktree), turns.base_commit], check=True)
        try:
            for _ in range(rounds):
                turns.rounds["base"].append(time_version(worktree / "src"))
                turns.rounds["this"].append(time_version(REPO / "src"))
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(worktree)], check=False)
    return turns
