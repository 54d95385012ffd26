"""CPU training steps under glibc malloc settings, in turns.

A training step allocates and frees blocks of tens to hundreds of MiB (at 768 px, 8 images of up to
8 objects: ~150 MiB of per-object image tokens, ~300 MiB of upscaled masks). glibc serves each from
fresh ``mmap`` pages and unmaps it on ``free``, so every step page-faults and zeroes them again.
The settings, each a ``GLIBC_TUNABLES`` value given to a whole ``segany train`` process:

* ``glibc_default``: as glibc comes;
* ``thp``: ``glibc.malloc.hugetlb=1``, transparent huge pages for malloc's memory (a fault per
  2 MiB instead of per 4 KiB; freed memory still goes back);
* ``keep``: no block from ``mmap`` and no trimming, so freed memory is reused and never given back.

Each run is ``segany train`` on a copy of CONFIG with a fresh output folder, a few steps and the
given batch size, in its own process; the settings alternate so that drift of a shared machine
falls on all. Prints JSON: per run the seconds of each step (from the run's log), the user and
kernel (sys) CPU seconds and the peak RSS; per setting the median step after the first two
(warm-up), its speed-up over ``glibc_default``, and the largest peak RSS.

    python bench/train_malloc.py docs/default_model/stage10b_768_cpu.yaml --batch-size 2 --steps 5 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _timing import REPO, print_json

from segany.train.trainer import ConfigError, TrainConfig, load_config

WARMUP_STEPS = 2
SETTINGS = {
    "glibc_default": "",
    "thp": "glibc.malloc.hugetlb=1",
    "keep": f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={1 << 62}",
}


def run_once(config: TrainConfig, setting: str, folder: Path) -> dict:
    run = Path(tempfile.mkdtemp(prefix=f"{setting}_", dir=folder))
    out, cfg_path, log = run / "out", run / "config.yaml", run / "stderr.txt"
    cfg_path.write_text(yaml.safe_dump(dataclasses.replace(config, output_dir=str(out)).to_dict()))
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if SETTINGS[setting]:
        env["GLIBC_TUNABLES"] = SETTINGS[setting]
    command = [sys.executable, "-m", "segany.cli", "train", str(cfg_path)]
    # Relative paths of the config (data_root, init_checkpoint) are the repository's, as for segany train.
    # stderr (the progress bar) goes to a file: a pipe nobody reads while waiting would fill and stall the run.
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU times and peak RSS
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: segany train failed ({setting}):\n{log.read_text()[-2000:]}")
    steps = [json.loads(line)["train"]["seconds"] for line in (out / "log.jsonl").read_text().splitlines()]
    return {
        "setting": setting,
        "step_seconds": [round(s, 2) for s in steps],
        "user_seconds": round(usage.ru_utime, 1),
        "sys_seconds": round(usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a training config (YAML)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help=f"steps per run; the first {WARMUP_STEPS} are not counted")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting, in turns")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    if args.steps <= WARMUP_STEPS:
        raise SystemExit(f"error: --steps must be more than the {WARMUP_STEPS} warm-up steps")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    # Only the step count, batch and logging change; warm-up off so the lr is the same every step.
    config = dataclasses.replace(
        config,
        steps=args.steps,
        batch_size=args.batch_size,
        log_every=1,
        checkpoint_every=10**6,
        warmup_steps=0,
        val_every=0,
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="train_malloc_") as tmp:
        for _ in range(args.repeats):
            for setting in args.settings:
                runs.append(run_once(config, setting, Path(tmp)))
                print(json.dumps(runs[-1]), file=sys.stderr)
    summary = {}
    for setting in args.settings:
        mine = [r for r in runs if r["setting"] == setting]
        summary[setting] = {
            "median_step_seconds": round(
                statistics.median(s for r in mine for s in r["step_seconds"][WARMUP_STEPS:]), 2
            ),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
        }
    if "glibc_default" in summary:
        for row in summary.values():
            row["speedup"] = round(summary["glibc_default"]["median_step_seconds"] / row["median_step_seconds"], 3)
    print_json(
        {
            "benchmark": "train_malloc",
            "config": args.config,
            "batch_size": args.batch_size,
            "settings": {name: SETTINGS[name] for name in args.settings},
            "summary": summary,
            "runs": runs,
            "loadavg_1min_at_end": os.getloadavg()[0],
        },
        args.out,
    )


if __name__ == "__main__":
    main()
