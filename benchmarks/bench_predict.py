"""`transferlab predict` over many small images: seconds to the first printed line and to exit, on the run's
ONNX export (the default) and on PyTorch (`--no-onnx`), alternating, one command at a time.

The images are the embedded set's PNGs (28 px), copied round-robin into N files once. The run is a finished
`transferlab compare` folder (its model and the export compare wrote); give one, or the bench trains a demo run
(`transferlab demo`, about 15 min on 2 cores) in its folder first.

    python benchmarks/bench_predict.py --run RUN_DIR            # 10,000 images, 2 rounds, about 16 min on 2 cores
    python benchmarks/bench_predict.py --run RUN_DIR --images 500 --rounds 1   # a smoke test
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transferlab.atomic import write_json_atomic
from transferlab.data.embedded import export_embedded

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODES = {"ONNX Runtime (default)": [], "PyTorch (--no-onnx)": ["--no-onnx"]}


def images(work: Path, n: int) -> Path:
    """N PNGs made once from the embedded set's files, named in order."""
    folder = work / f"images_{n}"
    if not (folder / ".complete").exists():
        sources = sorted(p for d in export_embedded(work / "embedded") for p in Path(d).rglob("*.png"))
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shutil.copyfile(sources[i % len(sources)], folder / f"{i:05d}.png")
        (folder / ".complete").write_text(f"{n}\n")
    return folder


def demo_run(work: Path) -> Path:
    runs = work / "runs"
    finished = sorted(p.parent for p in runs.glob("*/results.json"))
    if not finished:
        subprocess.run([sys.executable, "-m", "transferlab", "demo", "--runs-dir", str(runs), "--cache-dir",
                        str(work / "cache")], check=True)
        finished = sorted(p.parent for p in runs.glob("*/results.json"))
    return finished[-1]


def timed_predict(run: Path, folder: Path, n: int, flags: list[str]) -> dict:
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "transferlab", "predict", *flags, str(run), str(folder)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = [child.stdout.readline()]
    first = time.perf_counter() - start
    lines += list(child.stdout)
    if child.wait() != 0 or len(lines) != n:
        raise SystemExit(f"predict {' '.join(flags)} exited {child.returncode} after {len(lines)} of {n} lines")
    return {"first_line_seconds": first, "total_seconds": time.perf_counter() - start}


def main(args: argparse.Namespace) -> dict:
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    run = args.run or demo_run(work)
    folder = images(work, args.images)
    rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for r in range(args.rounds):
        order = list(MODES) if r % 2 == 0 else list(reversed(MODES))  # neither mode always goes first
        for mode in order:
            rows[mode].append(timed_predict(run, folder, args.images, MODES[mode]))
            print(f"round {r + 1} {mode}: {rows[mode][-1]}", flush=True)
    report = {"run": str(run), "images": args.images, "rounds": args.rounds, "modes": rows}
    print(f"\n| {args.images:,} images | first line s (each round) | whole run s (each round) | median whole ÷ ONNX |"
          "\n|---|---|---|---:|")
    onnx_median = statistics.median(x["total_seconds"] for x in rows["ONNX Runtime (default)"])
    for mode, runs in rows.items():
        firsts = ", ".join(f"{x['first_line_seconds']:.2f}" for x in runs)
        totals = ", ".join(f"{x['total_seconds']:.0f}" for x in runs)
        ratio = statistics.median(x["total_seconds"] for x in runs) / onnx_median
        print(f"| {mode} | {firsts} | {totals} | {ratio:.2f}× |")
    write_json_atomic(args.out or RESULTS_DIR / f"predict_{args.images}_images.json", report)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished compare run (default: train a demo run in --work)")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, help="the bench's folder (default: a new temporary one)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/predict_N_images.json)")
    main(parser.parse_args())
