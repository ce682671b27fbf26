"""Does the audit find wrong labels, and does leaving them out give the accuracy back?

For each dataset, rate and seed: a seeded `rate` of the train + validation labels is flipped to another class
(the image is linked into another class folder; test stays clean), then
- `transferlab audit` on the noisy folders: recall and precision of its doubted labels against the flipped ones,
- compare (transfer phases, final fit off) on the noisy labels, and again with `--exclude` of what the audit
  doubted: test accuracy of the kept model, beside the same seed trained on the clean labels.
Rate 0 is the clean set: its count of doubted labels is reported as it is.

    python benchmarks/bench_audit.py          # fashion + digits, 0/5/10 %, 3 seeds; trains at 0 and 5 %
    python benchmarks/bench_audit.py --datasets fashion --rates 0.05 --seeds 1 --train-rates ''   # audit only
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_datasets import BUILDERS  # noqa: E402

from transferlab.atomic import write_json_atomic  # noqa: E402
from transferlab.data.scan import scan_image_folder  # noqa: E402
from transferlab.experiments.audit import run_audit  # noqa: E402
from transferlab.experiments.compare import run_compare  # noqa: E402
from transferlab.experiments.config import CompareConfig  # noqa: E402
from transferlab.training.recipes import resolve_recipe  # noqa: E402

TEST_FRACTION = 0.2  # a dataset given as one folder gets a clean, seeded test part first


def pools(dataset: dict, root: Path) -> tuple[dict[str, Path], Path]:
    """({"train": dir, "val": dir} or {"data": dir}, the clean test folder)."""
    if "test_dir" in dataset:
        return {"train": dataset["train_dir"], "val": dataset["val_dir"]}, dataset["test_dir"]
    source = scan_image_folder(dataset["data_dir"])
    rng = np.random.default_rng(1234)
    out = root / "split"
    if not (out / ".complete").exists():
        for label, name in enumerate(source.class_names):
            members = sorted(im.path for im in source.images if im.label == label)
            test = set(rng.choice(len(members), round(TEST_FRACTION * len(members)), replace=False).tolist())
            for i, path in enumerate(members):
                target = out / ("test" if i in test else "pool") / name / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(path.resolve(), target)
        (out / ".complete").write_text("")
    return {"data": out / "pool"}, out / "test"


def noisy_copy(parts: dict[str, Path], rate: float, seed: int, out: Path) -> tuple[dict[str, Path], set[str]]:
    """The same images linked into class folders, `rate` of them (seeded) into another class's; the flipped paths."""
    folders = {part: scan_image_folder(path) for part, path in parts.items()}
    everything = [(part, im) for part, folder in folders.items() for im in folder.images]
    rng = np.random.default_rng(seed)
    n_classes = len(next(iter(folders.values())).class_names)
    flipped_at = set(rng.choice(len(everything), round(rate * len(everything)), replace=False).tolist())
    flipped = set()
    for i, (part, im) in enumerate(everything):
        label = (im.label + rng.integers(1, n_classes)) % n_classes if i in flipped_at else im.label
        target = out / part / folders[part].class_names[label] / f"{part}_{Path(im.path).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(Path(im.path).resolve(), target)
        if i in flipped_at:
            flipped.add(str(target))
    return {part: out / part for part in parts}, flipped


def config(folders: dict[str, Path], test: Path, seed: int, root: Path, **extra) -> CompareConfig:
    where = ({"data_dir": folders["data"]} if "data" in folders
             else {"train_dir": folders["train"], "val_dir": folders["val"]})
    return CompareConfig(**where, test_dir=test, seed=seed, backbone="tf_efficientnet_lite0", skip_scratch=True,
                         recipe=resolve_recipe("default", {"final_fit": False}), runs_dir=root / "runs",
                         show_progress=False, **extra)


def test_acc(run_dir: Path) -> float:
    results = json.loads((run_dir / "results.json").read_text())
    return results["phases"][results["model_phase"]]["test_acc"]


def cell(name: str, parts: dict, test: Path, rate: float, seed: int, root: Path, train: bool) -> dict:
    out = root / name / f"rate{rate:g}-seed{seed}"
    noisy, flipped = noisy_copy(parts, rate, seed, out / "data")
    started = time.perf_counter()
    audit_dir = run_audit(config(noisy, test, seed, out, audit=False))
    audit_seconds = time.perf_counter() - started
    audit = json.loads((audit_dir / "audit.json").read_text())
    doubted = {i["file"] for i in audit["issues"] if i["reason"] == "label"}
    found = len(doubted & flipped)
    row = {"dataset": name, "rate": rate, "seed": seed, "n_images": audit["n_images"], "flipped": len(flipped),
           "doubted": len(doubted), "recall": found / len(flipped) if flipped else None,
           "precision": found / len(doubted) if doubted and flipped else None,
           "probe_accuracy": audit["probe_accuracy"], "audit_seconds": audit_seconds}
    if train:
        row["test_acc_noisy"] = test_acc(run_compare(config(noisy, test, seed, out, audit=False)))
        row["test_acc_excluded"] = test_acc(run_compare(config(noisy, test, seed, out, audit=False,
                                                               exclude=tuple(sorted(doubted)))))
    print(json.dumps(row), flush=True)
    return row


def mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.mean(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fashion,digits")
    parser.add_argument("--rates", default="0,0.05,0.10", help="0: the clean set (its doubted count, its accuracy)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-rates", default="0,0.05",
                        help="the rates at which to also train on the noisy labels and without what was doubted "
                        "(two compare runs per seed: the costly part); '' for none")
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_audit"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audit.json")
    args = parser.parse_args()
    rows = []
    for name in args.datasets.split(","):
        parts, test = pools(BUILDERS[name](args.root / "datasets"), args.root / name)
        for rate in (float(r) for r in args.rates.split(",")):
            train = rate in {float(r) for r in args.train_rates.split(",") if r}
            rows += [cell(name, parts, test, rate, seed, args.root, train) for seed in range(args.seeds)]
    table = ["| dataset | flipped | doubted (mean) | recall | precision | test acc clean | noisy | noisy − doubted |"
             " recovered |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    summary = []
    for name in args.datasets.split(","):
        clean = [r for r in rows if r["dataset"] == name and r["rate"] == 0]
        for rate in sorted({r["rate"] for r in rows if r["dataset"] == name}):
            group = [r for r in rows if r["dataset"] == name and r["rate"] == rate]
            acc_clean, acc_noisy, acc_excl = (mean(clean, "test_acc_noisy"), mean(group, "test_acc_noisy"),
                                              mean(group, "test_acc_excluded"))
            lost = None if acc_clean is None or acc_noisy is None else acc_clean - acc_noisy
            recovered = (None if lost is None or acc_excl is None or lost <= 0 or rate == 0
                         else (acc_excl - acc_noisy) / lost)
            entry = {"dataset": name, "rate": rate, "n": len(group), "doubted": mean(group, "doubted"),
                     "recall": mean(group, "recall"), "precision": mean(group, "precision"),
                     "test_acc_clean": acc_clean, "test_acc_noisy": acc_noisy, "test_acc_excluded": acc_excl,
                     "recovered": recovered, "audit_seconds": mean(group, "audit_seconds")}
            summary.append(entry)
            fmt = lambda v, pct=True: "–" if v is None else f"{100 * v:.1f} %" if pct else f"{v:.2f}"  # noqa: E731
            table.append(f"| {name} | {rate:.0%} | {entry['doubted']:.0f} | {fmt(entry['recall'], False)} | "
                         f"{fmt(entry['precision'], False)} | {fmt(acc_clean)} | {fmt(acc_noisy)} | {fmt(acc_excl)} | "
                         f"{fmt(recovered, False)} |")
    print("\n".join(table))
    write_json_atomic(args.out, {"command": " ".join(sys.argv), "summary": summary, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
