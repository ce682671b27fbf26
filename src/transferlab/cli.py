"""Command line: parse arguments, call the API, print. The only place that knows argv and exit codes."""

import argparse
import errno
import functools
import json
import logging
import sys
import warnings
from typing import NoReturn
from pathlib import Path

# What the parser and main() need. The API that trains or loads models (torch, timm) and the reports (SciPy,
# matplotlib: 1.3 s of imports) are imported in the command that runs them, so that `predict` prints its
# first line sooner and `runs` stays light.
from transferlab.data.embedded import NAME as EMBEDDED_NAME, export_embedded
from transferlab.data.exclude import read_exclude_list
from transferlab.errors import UserError, one_line, quoted
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.interrupts import RunInterrupted
from transferlab.models.onnx_runtime import AUTO_ONNX
from transferlab.experiments.study_config import (DEFAULT_BACKBONES, DEFAULT_KS, FINAL_FIT_REFUSAL, STUDIES,
                                                  StudyConfig, parse_ks)
from transferlab.training.ranks import torchrun_ranks
from transferlab.options import ENGINES, EXPORT_FORMATS, PRECISIONS, default_cache_dir, parse_duration
from transferlab.training.recipes import (PRESETS, UNFREEZE_KINDS, Unfreeze, flag_of, recipe_fields, resolve_recipe,
                                         value_type)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
ONNX_HELP = ("--onnx: the run's ONNX export (compare writes it; `transferlab export` renews it) on ONNX Runtime; "
             f"--no-onnx: the PyTorch model; default: {AUTO_ONNX}")
# failures of the machine, not the code: one line naming the path instead of a traceback
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def add_recipe_options(group) -> None:
    """--recipe and one flag per recipe field, from the field's declaration (training/recipes.py)."""
    group.add_argument("--recipe", default="default", choices=list(PRESETS),
                       help=f"default: the measured strong recipe; fast: default in about half the time "
                            f"({PRESETS['fast'].finetune_epochs} fine-tune epochs on {PRESETS['fast'].cached_views} "
                            "cached views; less accurate on very small sets); seeds: seed 002 exactly; seeds-000: "
                            "seed 000")
    for f in recipe_fields():
        kind, help = value_type(f), f.metadata["help"]
        if kind is Unfreeze:  # one field, a flag per kind of count
            exclusive = group.add_mutually_exclusive_group()
            for unfreeze_kind, (flag, what) in UNFREEZE_KINDS.items():
                exclusive.add_argument(flag, dest="unfreeze", metavar="N", help=what,
                                       type=functools.partial(_unfreeze_count, unfreeze_kind, flag))
        elif kind is bool:
            group.add_argument(flag_of(f), dest=f.name, action=argparse.BooleanOptionalAction, help=help)
        else:
            parse = functools.partial(_named, flag_of(f), f.metadata["parse"]) if f.metadata["parse"] else kind
            group.add_argument(flag_of(f), dest=f.name, type=parse, choices=f.metadata["choices"],
                               help=help,
                               metavar=None if f.metadata["choices"] else flag_of(f)[2:].upper().replace("-", "_"))


def _named(flag: str, parse, text: str):
    """A flag's parser whose one-line error names the flag."""
    try:
        return parse(text)
    except UserError as e:
        raise UserError(f"{flag}: {e}") from None


def _unfreeze_count(kind: str, flag: str, text: str) -> Unfreeze:
    if not text.isdigit():  # a UserError, not argparse's usage text: one line like every other bad value
        raise UserError(f"{flag} must be a whole number ≥ 0 (got '{text}')")
    return Unfreeze(kind, int(text))


def _add_training_options(p: argparse.ArgumentParser) -> None:
    d = CompareConfig.__dataclass_fields__
    p.add_argument("--backbone", help="timm model name (default: mobilenetv2_100 if its weights can be had, "
                   "else tf_efficientnet_lite0)")
    p.add_argument("--weights", type=Path, help="local weights file (.safetensors or .pth)")
    p.add_argument("--val-fraction", type=float, default=d["val_fraction"].default)
    p.add_argument("--test-fraction", type=float, default=d["test_fraction"].default,
                   help="a stratified test part, reported once and never used for a choice (default: none)")
    p.add_argument("--seed", type=int, default=d["seed"].default)
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default)
    add_recipe_options(p.add_argument_group("recipe", "a preset (--recipe) and overrides of its fields "
                                                      "(default: the preset's)"))
    p.add_argument("--class-weights", choices=["none", "auto"], default="none",
                   help="auto: weight the loss by inverse class frequency (imbalanced data)")
    p.add_argument("--dedupe", action="store_true",
                   help="drop validation/test images that (nearly) duplicate training images")
    p.add_argument("--exclude", type=read_exclude_list, default=(),  # its errors name --exclude
                   metavar="FILE", help="leave these images out of train/validation: the audit's CSV (or a copy "
                   "you edited) or a list of paths, one per line; recorded in split.json and the report")
    p.add_argument("--target-acc", type=float, default=d["target_acc"].default,
                   help="accuracy target of the verdict (on test when there is one)")
    p.add_argument("--time-budget", type=functools.partial(_named, "--time-budget", parse_duration), default=d["time_budget_seconds"].default,
                   dest="time_budget_seconds", help="e.g. 30m (default)")
    p.add_argument("--skip-scratch", action="store_true", help="train only the transfer model")
    p.add_argument("--strict", action="store_true", help="an undecodable image is an error, not a skip")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="runs the frozen backbone pass: auto = ONNX Runtime on CPU, PyTorch on GPU")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="training forwards: auto = bf16 autocast on GPUs that have it, fp32 on CPU")
    p.add_argument("--runs-dir", type=Path, default=d["runs_dir"].default)
    p.add_argument("--name", help="run name (default: the data folder's name)")
    p.add_argument("--cache-dir", type=Path, help=f"feature/decode caches (default {default_cache_dir()})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    track = p.add_argument_group("tracking", "optional extras: pip install 'transferlab[tensorboard]' / '[mlflow]'")
    track.add_argument("--tensorboard", type=Path, dest="tensorboard_dir", metavar="DIR",
                       help="write TensorBoard event files to DIR/<run folder name>")
    track.add_argument("--mlflow-uri", metavar="URI", help="log params, per-epoch metrics and the report to MLflow")


STUDY_OPTIONS = ("--studies", "--seeds", "--ks", "--scratch-ks", "--backbones", "--study-dir", "--ray",
                 "--cell-threads", "--cells-per-gpu")


def _add_study_options(p: argparse.ArgumentParser) -> None:
    d = StudyConfig.__dataclass_fields__
    p.add_argument("--studies", default=",".join(d["studies"].default),
                   help=f"comma-separated, from {', '.join(STUDIES)} (default: data)")
    p.add_argument("--seeds", type=int, default=d["seeds"].default,
                   help=f"seeds 0..N-1 per cell (default {d['seeds'].default})")
    p.add_argument("--ks", default=",".join("all" if k is None else str(k) for k in DEFAULT_KS),
                   help="images per class for the data study, e.g. 5,10,25,all")
    p.add_argument("--scratch-ks", help="the ks scratch trains at, some of --ks (default: the smallest, the middle "
                   "one and all; all is always added)")
    p.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES),
                   help="timm names for the backbones study (weights that cannot be had are listed as skipped)")
    p.add_argument("--study-dir", type=Path, help="where cells and the report go (default RUNS_DIR/study-NAME); "
                   "re-running into the same folder trains only what is missing")
    ray = p.add_argument_group("Ray", "each cell a Ray task: optional extra, pip install 'transferlab[ray]'")
    ray.add_argument("--ray", metavar="local|auto|ADDRESS", help="local: Ray on this machine; auto: the cluster "
                     "this node joined (`ray start`); or its address. The study folder and --cache-dir must be on "
                     "a filesystem every node mounts at the same path")
    ray.add_argument("--cell-threads", type=int, help="torch threads per cell, with or without --ray (equal counts "
                     "give equal numbers; a Ray task asks for as many CPUs); default: torch's default here")
    ray.add_argument("--cells-per-gpu", type=int, default=d["cells_per_gpu"].default,
                     help="with --ray and --device cuda: cells that share one GPU")


class OneLineParser(argparse.ArgumentParser):
    """argparse's own refusals (a malformed number, an unknown choice) as one `error:` line like every other
    bad value, not its usage block; subcommands inherit it. No abbreviations: `--studi time` or `--test-frac 0.3`
    would pass argparse but not the checks that read argv for options that would be ignored, so they were
    dropped without a word."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **(kwargs | {"allow_abbrev": False}))

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {one_line(message)}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="transferlab", description="Transfer learning for small image datasets, with an honest "
        "before/after: scratch vs pretrained-frozen vs fine-tuned.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="compare on the embedded Fashion-MNIST 'hard five' dataset")
    demo.add_argument("--export", type=Path, metavar="DIR", help="only write the dataset to DIR and exit")
    demo.add_argument("--study", action="store_true", help="run `transferlab study` on it instead of compare")
    _add_training_options(demo)
    _add_study_options(demo)

    st = sub.add_parser("study", help="many cells over seeds: data efficiency, time to accuracy, backbones")
    st.add_argument("data", nargs="?", type=Path, help="DATA/<class_name>/<images>")
    st.add_argument("--train", type=Path, dest="train_dir", help="explicit training pool (with --val)")
    st.add_argument("--val", type=Path, dest="val_dir", help="explicit validation folder")
    st.add_argument("--test", type=Path, dest="test_dir", help="a test folder")
    _add_training_options(st)
    _add_study_options(st)
    st.set_defaults(test_fraction=0.2)  # a study reports test accuracy

    cmp = sub.add_parser("compare", help="scratch vs frozen vs fine-tuned on your data")
    cmp.add_argument("data", nargs="?", type=Path, help="DATA/<class_name>/<images>")
    cmp.add_argument("--train", type=Path, dest="train_dir", help="explicit training folder (with --val)")
    cmp.add_argument("--val", type=Path, dest="val_dir", help="explicit validation folder")
    cmp.add_argument("--test", type=Path, dest="test_dir", help="a test folder: reported, never used for a choice")
    cmp.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    _add_training_options(cmp)
    for p in (cmp, demo):
        p.add_argument("--audit", action=argparse.BooleanOptionalAction,
                       default=CompareConfig.__dataclass_fields__["audit"].default,
                       help="the report's Audit section: doubtful labels, outliers, copies (default: on)")

    aud = sub.add_parser("audit", help="find wrong labels, outliers and copies among the training images")
    aud.add_argument("data", nargs="?", type=Path, help="DATA/<class_name>/<images>")
    aud.add_argument("--train", type=Path, dest="train_dir", help="explicit training folder (with --val)")
    aud.add_argument("--val", type=Path, dest="val_dir", help="explicit validation folder")
    aud.add_argument("--test", type=Path, dest="test_dir", help="a test folder: never read by the audit")
    aud.add_argument("--folds", type=int, help="folds of the out-of-fold probe (default 5)")
    for dest in ("backbone", "weights", "image_size_px", "val_fraction", "test_fraction", "seed", "device",
                 "engine", "runs_dir", "name", "cache_dir", "quiet", "strict"):  # compare's own options, shared
        aud._add_action(next(a for a in cmp._actions if a.dest == dest))

    pred = sub.add_parser("predict", help="classify new images with a run's model")
    pred.add_argument("run_dir", type=Path)
    pred.add_argument("images", nargs="+", type=Path, help="image files or folders")
    pred.add_argument("--top-k", type=int, default=3)
    pred.add_argument("--batch-size", type=int, default=32, help="images decoded and classified at a time; "
                      "each batch's lines are printed as soon as it is done (the first image goes alone)")
    pred.add_argument("--json", action="store_true", help="a JSON array, one image per line as it is done")
    pred.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None, help=ONNX_HELP)

    ev = sub.add_parser("evaluate", help="accuracy of a run's model on a labelled folder")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("labelled_dir", type=Path)
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None, help=ONNX_HELP)

    rep = sub.add_parser("report", help="rebuild report.md/html of a run or study from its results.json")
    rep.add_argument("run_dir", type=Path)

    exp = sub.add_parser("export", help="write a run's model as ONNX (parity-checked against PyTorch)")
    exp.add_argument("run_dir", type=Path)
    exp.add_argument("--format", choices=EXPORT_FORMATS, default="onnx")
    exp.add_argument("--out", type=Path, metavar="DIR", help="where model.onnx + model.onnx.json go (default: RUN_DIR)")
    exp.add_argument("--check-images", nargs="+", type=Path, metavar="IMAGE",
                     help="check parity on these images (default: seeded noise images)")

    runs = sub.add_parser("runs", help="list past runs and studies with their headline numbers")
    runs.add_argument("--runs-dir", type=Path, default=CompareConfig.__dataclass_fields__["runs_dir"].default)
    return parser


def _config(args: argparse.Namespace, **data) -> CompareConfig:
    fields = CompareConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields} | data
    recipe = resolve_recipe(args.recipe, vars(args))  # the given flags override the preset's fields
    return CompareConfig(**(values | {"recipe": recipe}), show_progress=not args.quiet)


def _study_config(args: argparse.Namespace, cfg: CompareConfig) -> StudyConfig:
    if args.final_fit:  # the default recipe has one: only the flag says it was asked for
        raise UserError(FINAL_FIT_REFUSAL)
    return StudyConfig(compare=cfg, studies=tuple(s.strip() for s in args.studies.split(",")), seeds=args.seeds,
                       ks=parse_ks(args.ks),
                       scratch_ks=None if args.scratch_ks is None else parse_ks(args.scratch_ks, "--scratch-ks"),
                       backbones=tuple(b.strip() for b in args.backbones.split(",")),
                       study_dir=args.study_dir, ray=args.ray, cell_threads=args.cell_threads,
                       cells_per_gpu=args.cells_per_gpu)


def _print_study_summary(study_dir: Path) -> None:
    if not torchrun_ranks().is_main:  # rank 0 speaks for a torchrun job
        return
    print(f"report: {study_dir / 'report.md'}\n        {study_dir / 'report.html'}")


def _print_summary(run_dir: Path) -> None:
    if not torchrun_ranks().is_main:
        return
    from transferlab.reporting.tables import comparison_table, verdict_lines
    from transferlab.results_io import read_run_results
    results = read_run_results(run_dir)
    print(comparison_table(results))
    print("\n".join(verdict_lines(results)).replace("**", ""))
    print(f"report: {run_dir / 'report.md'}\nmodel:  {run_dir / 'model.safetensors'}")


def _refuse_options_with_resume(args: argparse.Namespace, argv: list[str]) -> None:
    """A resumed run continues with its saved options; silently ignoring new ones would mislead."""
    given = [t.split("=")[0] for t in argv[1:] if t.startswith("-") and t.split("=")[0] not in ("--resume", "--quiet")]
    given += ["DATA"] if args.data is not None else []
    if given:
        raise UserError(f"--resume continues a run with the options saved in its config.json; drop "
                        f"{', '.join(given)} (or start a new run with them)")


def _print_predictions(stream, as_json: bool) -> None:
    """Each batch's lines as soon as it is done, flushed so a pipe sees them at once; a progress bar on stderr
    only when that is a terminal. --json: one JSON array, one image per line."""
    from transferlab.progress import progress_bar
    opened = False
    with progress_bar(total=stream.n_files, show=True, desc="predict", unit="img", leave=False) as bar:
        for n_read, batch in stream.batches:
            if as_json:
                lines = [("," if opened or i else "[") + _json_text({"path": str(p.path), "top": [
                    {"class": c, "probability": round(pr, 5)} for c, pr in p.top]}) for i, p in enumerate(batch)]
            else:  # one line an image, whatever its name holds
                lines = [f"{one_line(str(p.path))}: " + ", ".join(f"{c} {pr:.1%}" for c, pr in p.top) for p in batch]
            opened = opened or bool(batch)
            with bar.external_write_mode():
                for line in lines:
                    print(line)
                sys.stdout.flush()
            bar.update(n_read)
    if as_json:
        print("]" if opened else "[]", flush=True)


def _json_text(value: dict) -> str:
    """JSON as UTF-8 text; a file name whose bytes are not UTF-8 is written with \\u escapes of the surrogates
    that stand for them (valid JSON; `os.fsencode` of the read-back name gives the bytes) instead of raw bytes."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


def _escape_what_stdout_cannot_encode() -> None:
    """Under an ASCII locale (LC_ALL=C) a non-ASCII class or file name is printed escaped, not a traceback."""
    encoding = (getattr(sys.stdout, "encoding", None) or "utf-8").lower().replace("-", "")
    if encoding not in ("utf8", "utf_8") and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        if torchrun_ranks().is_distributed:  # every rank would write the same images at once
            raise UserError("demo is not run under torchrun; write the data once with `transferlab demo --export DIR`, "
                            "then torchrun `compare --train DIR/train --val DIR/val --test DIR/test`")
        if args.export:
            print("wrote " + ", ".join(map(str, export_embedded(args.export))))
            return 0
        where = (args.cache_dir or default_cache_dir()) / "datasets" / EMBEDDED_NAME
        cfg = _config(args, train_dir=where / "train", val_dir=where / "val", test_dir=where / "test",
                      name=args.name or EMBEDDED_NAME)
        stray = [t.split("=")[0] for t in argv if t.split("=")[0] in STUDY_OPTIONS]
        if stray and not args.study:
            raise UserError(f"{', '.join(stray)} belong to `demo --study`; add --study or drop them")
        study_cfg = _study_config(args, cfg) if args.study else None
        from transferlab import compare, study
        export_embedded(where)  # after the options were checked: a bad one writes nothing
        if study_cfg is not None:
            _print_study_summary(study(study_cfg))
        else:
            _print_summary(compare(cfg))
    elif args.command == "study":
        explicit = args.train_dir is not None
        if (explicit or args.test_dir) and any(t.split("=")[0] == "--test-fraction" for t in argv):
            raise UserError("--test-fraction draws the test part from DATA; with --test or --train/--val drop it")
        cfg = _config(args, data_dir=args.data, test_fraction=0.0 if explicit or args.test_dir else args.test_fraction)
        from transferlab import study
        _print_study_summary(study(_study_config(args, cfg)))
    elif args.command == "compare":
        from transferlab import compare, resume
        if args.resume:
            _refuse_options_with_resume(args, argv)
            _print_summary(resume(args.resume, show_progress=not args.quiet))
        else:
            _print_summary(compare(_config(args, data_dir=args.data)))
    elif args.command == "audit":
        from transferlab.experiments.audit import run_audit
        from transferlab.training.recipes import resolve_recipe as recipe_with
        fields = CompareConfig.__dataclass_fields__
        cfg = CompareConfig(**{k: v for k, v in vars(args).items() if k in fields}, data_dir=args.data,
                            recipe=recipe_with("default", {"image_size_px": args.image_size_px}),
                            show_progress=not args.quiet)
        folder = run_audit(cfg, args.folds)
        print(f"issues: {folder / 'audit.csv'}\nreport: {folder / 'report.md'}\n        {folder / 'report.html'}")
    elif args.command == "predict":
        from transferlab.predict import predict_batches
        _print_predictions(predict_batches(args.run_dir, args.images, top_k=args.top_k, onnx=args.onnx,
                                           batch_size=args.batch_size), args.json)
    elif args.command == "evaluate":
        from transferlab import evaluate_folder
        result = evaluate_folder(args.run_dir, args.labelled_dir, onnx=args.onnx)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"accuracy {result['accuracy']:.1%} (balanced {result['balanced_accuracy']:.1%}) "
                  f"on {result['n_images']} images")
            for name, recall in result["per_class_recall"].items():
                print(f"  {name}: {recall:.1%}")
    elif args.command == "report":
        from transferlab.reporting.report import write_report
        from transferlab.reporting.study_report import write_study_report
        from transferlab.results_io import is_study_folder
        print(write_study_report(args.run_dir) if is_study_folder(args.run_dir) else write_report(args.run_dir))
    elif args.command == "export":
        from transferlab import export
        from transferlab.deploy import SIDECAR_FILE
        onnx = export(args.run_dir, args.out, args.format, args.check_images)["onnx"]
        print(f"wrote {(args.out or args.run_dir) / onnx['file']} (+ {SIDECAR_FILE}); max |delta logit| vs PyTorch "
              f"{onnx['parity_max_abs_logit_delta']:.1e} on {onnx['parity_inputs']}")
    elif args.command == "runs":
        from transferlab.reporting.runs_index import list_runs
        print("\n".join(list_runs(args.runs_dir)) or f"no runs in '{args.runs_dir}'")
    return 0


def main(argv: list[str] | None = None) -> int:
    ranks = torchrun_ranks()
    logging.basicConfig(level=logging.WARNING if ranks.is_main else logging.ERROR, format="%(message)s")
    warnings.formatwarning = lambda msg, category, *a, **k: f"warning: {msg}\n"
    if not ranks.is_main:  # the other ranks see the same data and options: rank 0's warnings say it all
        warnings.simplefilter("ignore")
    _escape_what_stdout_cannot_encode()
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {e}" if ranks.is_main else f"error (rank {ranks.rank}): {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunInterrupted as e:
        print(str(e), file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # outside a run's own handler: before its folder exists, or in report/predict
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        culprit = e.filename2 or e.filename  # a rename names its target second
        where = f" {quoted(culprit)}" if culprit else ""
        print(f"error: {e.strerror}:{where}; free space or fix its permissions, or choose another --runs-dir / "
              "--cache-dir", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
