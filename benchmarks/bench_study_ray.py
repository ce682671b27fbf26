"""A data study in one process against the same study with `--ray local`, on this machine, from cold caches.

Three invocations of `transferlab study` on the embedded set (explicit train/val/test folders), one after the
other, each in its own folder with its own empty cache:

  one process, 1 thread    --cell-threads 1            (the reference for identical numbers)
  --ray local, 1 thread    --cell-threads 1 --ray local (cores / 1 cells at a time)
  one process, 2 threads   --cell-threads 2            (what a 2-core user gets without --ray)

Reported per invocation: the command's wall time (process start to exit), the study's own `wall_seconds`,
the sum of its cells' seconds, and how many cells equal the 1-thread reference exactly (every phase's
accuracies, kept epoch, steps and test predictions). `--precision fp32`, so no bf16 probe can make two runs
choose differently. A mode whose folder already holds a finished study and a recorded wall time is not run
again (a stopped bench resumes; `--work` names the folder).

    python benchmarks/bench_study_ray.py                 # 2 seeds at 64 px, about 50 min on 2 cores
    python benchmarks/bench_study_ray.py --quick         # 1 seed, k = 5 and all, 32 px, 1 epoch a phase
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transferlab.atomic import write_json_atomic
from transferlab.data.embedded import export_embedded

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODES = {"one process, 1 thread": ["--cell-threads", "1"],
         "--ray local, 1 thread": ["--cell-threads", "1", "--ray", "local"],
         "one process, 2 threads": ["--cell-threads", "2"]}
FULL = ["--seeds", "2", "--image-size", "64"]
QUICK = ["--seeds", "1", "--ks", "5,all", "--image-size", "32", "--scratch-epochs", "1", "--frozen-epochs", "1",
         "--finetune-epochs", "1"]


def folder_of(mode: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in mode).strip("-")


def run_mode(mode: str, data: tuple[Path, Path, Path], size_options: list[str], work: Path) -> float:
    """The command's wall time: measured now, or read back from an earlier run of this bench."""
    walls_file = work / "walls.json"
    walls = json.loads(walls_file.read_text()) if walls_file.exists() else {}
    folder = work / folder_of(mode)
    if mode in walls and (folder / "study" / "results.json").exists():
        return walls[mode]
    train, val, test = data
    command = [str(Path(sys.executable).parent / "transferlab"), "study", "--train", str(train), "--val", str(val),
               "--test", str(test), *size_options, "--precision", "fp32", "--quiet", *MODES[mode],
               "--study-dir", str(folder / "study"), "--cache-dir", str(folder / "cache"),
               "--runs-dir", str(folder / "runs")]
    print(f"{mode}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    walls[mode] = time.perf_counter() - started
    write_json_atomic(walls_file, walls)
    return walls[mode]


def cell_numbers(cell: dict) -> dict:
    return {"test_predictions": cell["test_predictions"],
            "phases": {name: {k: p[k] for k in ("val_acc", "test_acc", "best_epoch", "steps")}
                       for name, p in cell["phases"].items()}}


def main(args: argparse.Namespace) -> dict:
    work = args.work or Path(tempfile.mkdtemp(prefix="transferlab-study-ray-"))
    data = export_embedded(work / "data") if not (work / "data").exists() else \
        tuple(work / "data" / part for part in ("train", "val", "test"))
    size_options = QUICK if args.quick else FULL
    rows = {}
    for mode in MODES:
        wall = run_mode(mode, data, size_options, work)
        study = json.loads((work / folder_of(mode) / "study" / "results.json").read_text())
        rows[mode] = {"command_seconds": wall, "study_seconds": study["wall_seconds"],
                      "cells_seconds": sum(c["seconds"] for c in study["cells"]), "cells": study["cells"]}
    reference = {c["hash"]: cell_numbers(c) for c in rows["one process, 1 thread"]["cells"]}
    report = {"options": size_options + ["--precision", "fp32"], "work": str(work), "modes": {}}
    print("| invocation | command s | study s | sum of cells s | cells equal to 1-thread one process | speed-up vs "
          "one process, 1 thread / 2 threads |\n|---|---:|---:|---:|---:|---:|")
    for mode, row in rows.items():
        same = sum(cell_numbers(c) == reference.get(c["hash"]) for c in row["cells"])
        vs = [rows[m]["command_seconds"] / row["command_seconds"] for m in ("one process, 1 thread",
                                                                           "one process, 2 threads")]
        report["modes"][mode] = {k: v for k, v in row.items() if k != "cells"} | {
            "n_cells": len(row["cells"]), "cells_equal_to_reference": same, "speed_up_vs_one_process": vs}
        print(f"| {mode} | {row['command_seconds']:.0f} | {row['study_seconds']:.0f} | {row['cells_seconds']:.0f} | "
              f"{same} of {len(row['cells'])} | {vs[0]:.2f}× / {vs[1]:.2f}× |")
    write_json_atomic(args.out or RESULTS_DIR / f"ray_study_local{'_quick' if args.quick else ''}.json", report)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test, a few minutes")
    parser.add_argument("--work", type=Path, help="the bench's folder (default: a new temporary one)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/ray_study_local*.json)")
    main(parser.parse_args())
