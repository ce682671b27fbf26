"""The audit (experiments/audit.py) and --exclude (data/exclude.py): real images, planted mistakes."""

import csv
import json
from pathlib import Path

import pytest

from transferlab.cli import main
from transferlab.data.exclude import read_exclude_list
from transferlab.errors import UserError, quoted
from transferlab.experiments.audit import run_audit
from transferlab.results_io import read_run_results

from conftest import tiny_config


def _rows(folder: Path) -> list[dict]:
    with open(folder / "audit.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_planted_wrong_labels_are_doubted_and_the_test_split_is_never_read(planted_labels, tmp_path):
    data, wrong = planted_labels
    folder = run_audit(tiny_config(data, tmp_path, image_size_px=64, test_fraction=0.2))
    rows = _rows(folder)
    doubted = {r["file"] for r in rows if r["reason"] == "label"}
    split = json.loads((folder / "split.json").read_text())
    test_files = {str(data / f) for f, subset in split["files"].items() if subset == "test"}
    pool = [f for f, subset in split["files"].items() if subset in ("train", "val")]
    planted_in_pool = {str(w) for w in wrong} - test_files
    assert planted_in_pool and doubted == planted_in_pool  # the classes are easy: exactly the planted ones
    assert test_files and not test_files & {r["file"] for r in rows}
    assert {r["subset"] for r in rows} <= {"train", "val"}
    audit = json.loads((folder / "audit.json").read_text())
    assert audit["n_images"] == len(pool)
    by_file = {r["file"]: r for r in rows if r["reason"] == "label"}
    for w in planted_in_pool:  # the suggestion is the class the image shows
        assert by_file[w]["suggested"] == ("garment" if Path(w).parent.name == "photo" else "photo")
    assert "![the top issues](audit_issues.png)" in (folder / "report.md").read_text()


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_exclude_with_an_unknown_path_or_a_damaged_csv_is_one_line_and_writes_nothing(planted_labels, tmp_path, capsys):
    data, _ = planted_labels
    runs = tmp_path / "runs"
    unknown = tmp_path / "list.txt"
    unknown.write_text(f"{data / 'garment' / 'no_such.png'}\n")
    damaged = tmp_path / "audit.csv"
    damaged.write_text("file,subset,given\n" f"{data / 'garment' / 'x.png'},train\n")
    binary = tmp_path / "bytes.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    for bad, says in ((unknown, "no_such.png"), (damaged, "line 2"), (binary, "bytes.csv")):
        code, err = _cli(["compare", str(data), "--exclude", str(bad), "--runs-dir", str(runs),
                          "--cache-dir", str(tmp_path / "cache"), "--image-size", "32"], capsys)
        assert code == 2 and err.count("\n") == 0 and err.startswith("error: --exclude") and says in err, err
    assert not runs.exists()


def test_excluding_a_whole_class_says_none_is_left_and_to_list_fewer(small_data, tmp_path, capsys):
    coats = sorted((small_data / "Coat").iterdir())
    listing = tmp_path / "exclude.txt"
    listing.write_text("".join(f"{p}\n" for p in coats))
    code, err = _cli(["compare", str(small_data), "--exclude", str(listing), "--runs-dir", str(tmp_path / "runs"),
                      "--cache-dir", str(tmp_path / "cache"), "--image-size", "32", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 0, err
    assert f"class 'Coat' has 0 usable images once --exclude left out {len(coats)}" in err
    assert "list fewer of its images in --exclude" in err
    assert not (tmp_path / "runs").exists()


def test_exclude_leaves_the_images_out_of_training_records_them_and_keeps_the_test_set(small_data, tmp_path):
    from transferlab import compare
    classes = sorted(p for p in small_data.iterdir())
    listing = tmp_path / "exclude.txt"
    chosen = [sorted(classes[0].iterdir())[0], sorted(classes[1].iterdir())[0]]
    listing.write_text("# two images\n" + "".join(f"{p}\n" for p in chosen))
    base = tiny_config(small_data, tmp_path, test_fraction=0.2, skip_scratch=True, audit=False)
    plain = compare(base)
    cfg = tiny_config(small_data, tmp_path, test_fraction=0.2, skip_scratch=True, audit=False,
                      exclude=read_exclude_list(listing))
    run = compare(cfg)
    split, split_plain = (json.loads((r / "split.json").read_text())["files"] for r in (run, plain))
    in_test = [p for p in chosen if split_plain[str(p.relative_to(small_data))] == "test"]
    assert not in_test, "pick images outside the seed's test part"
    assert sorted(f for f, s in split.items() if s == "excluded") == sorted(str(p.relative_to(small_data))
                                                                            for p in chosen)
    assert {f for f, s in split.items() if s == "test"} == {f for f, s in split_plain.items() if s == "test"}
    results = read_run_results(run)
    assert sorted(results.data.excluded) == sorted(map(str, chosen))
    assert results.data.n_train + results.data.n_val == (read_run_results(plain).data.n_train
                                                         + read_run_results(plain).data.n_val - 2)
    assert "excluded by --exclude" in (run / "report.md").read_text()


def test_exclude_refuses_a_test_image(small_data, tmp_path):
    from transferlab import compare
    probe = compare(tiny_config(small_data, tmp_path, test_fraction=0.2, skip_scratch=True, audit=False))
    test_file = next(f for f, s in json.loads((probe / "split.json").read_text())["files"].items() if s == "test")
    runs = tmp_path / "refused"
    with pytest.raises(UserError, match="a test image"):
        compare(tiny_config(small_data, tmp_path, test_fraction=0.2, runs_dir=runs,
                            exclude=(str(small_data / test_file),)))
    assert not runs.exists()


def test_exclude_list_reads_the_audit_csv_and_plain_lists_relative_to_their_folder(tmp_path):
    (tmp_path / "lists").mkdir()
    plain = tmp_path / "lists" / "list.txt"
    plain.write_text("# comment\n\n../data/a.png\n../data/a.png\n/abs/b.png\n")
    assert read_exclude_list(plain) == (str(tmp_path / "data" / "a.png"), "/abs/b.png")
    audit_csv = tmp_path / "audit.csv"
    audit_csv.write_text('file,subset,given,suggested,score,reason,detail\n"/d/x, y.png",train,a,b,0.1,label,\n')
    assert read_exclude_list(audit_csv) == ("/d/x, y.png",)
    with pytest.raises(UserError, match="cannot be read"):
        read_exclude_list(tmp_path / "missing.csv")


def test_compare_report_has_the_audit_section(finished_run):
    results = read_run_results(finished_run)
    assert results.audit is not None and results.audit.n_images == results.data.n_train + results.data.n_val
    report = (finished_run / "report.md").read_text()
    assert "## Audit" in report and f"{results.audit.n_images} train + validation images" in report


def test_the_audit_command_finds_an_exact_copy_and_runs_lists_it(planted_labels, tmp_path, capsys):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(planted_labels[0], data)
    original = sorted((data / "garment").iterdir())[0]
    shutil.copy(original, data / "garment" / "zz_copy.png")
    code = main(["audit", str(data), "--image-size", "64", "--runs-dir", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "audit.csv" in out
    folder = next((tmp_path / "runs").iterdir())
    copies = [r for r in _rows(folder) if r["reason"] == "duplicate"]
    assert [(Path(r["file"]).name, r["detail"]) for r in copies] == [("zz_copy.png", str(original))]
    assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert f"{folder.name}: audit of" in capsys.readouterr().out


@pytest.mark.parametrize("header", ["file;subset;given", "File,subset,given", "file\tsubset"])
def test_an_exclude_csv_from_a_spreadsheet_is_one_line_not_its_header_read_as_an_image(tmp_path, header):
    """Before, a ';'-separated or 'File' header made the header line an image path: '… is not an image of …'."""
    listed = tmp_path / "doubted.csv"
    listed.write_text(f"{header}\n/d/x.png;train;a\n")
    with pytest.raises(UserError) as error:
        read_exclude_list(listed)
    assert str(error.value) == (f"--exclude '{listed}': its first line {quoted(header)} looks like a CSV header, but "
                                "not one with a 'file' column separated by commas; save it as the audit writes it "
                                "(comma-separated, lower-case header)")


def test_a_study_refuses_exclude_in_one_line(small_data, tmp_path):
    from transferlab import StudyConfig
    listed = str(next(next(small_data.iterdir()).iterdir()))
    with pytest.raises(UserError, match="does not take --exclude"):
        StudyConfig(tiny_config(small_data, tmp_path, exclude=(listed,)))


@pytest.fixture
def feature_batches(monkeypatch) -> list[tuple[str, int]]:
    """(engine that ran it, images in it) for each batch the audit's feature pass computes from now on."""
    from transferlab.experiments import audit

    batches: list[tuple[str, int]] = []
    real = audit.pass_runner

    def recording_runner(*args, **kwargs):
        runner = real(*args, **kwargs)

        def run(x):
            out = runner(x)  # first, so that a fallback on this batch shows as the engine that ran it
            batches.append((runner.engine, len(x)))
            return out
        return run
    monkeypatch.setattr(audit, "pass_runner", recording_runner)
    return batches


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_audit_features_are_timms_last_feature_levels_and_a_warm_cache_adds_only_what_it_lacks(embedded_dirs,
                                                                                               tmp_path,
                                                                                               feature_batches,
                                                                                               engine):
    from types import SimpleNamespace

    import numpy as np
    import torch
    from PIL import Image

    from transferlab.experiments import audit
    from transferlab.models.backbones import load_backbone
    from transferlab.training.inputs import normalise

    pretrained = load_backbone("tf_efficientnet_lite0", None, 32)
    backbone, prep = pretrained.module, pretrained.preprocessing
    files = sorted((embedded_dirs[0] / "Shirt").iterdir())[:10]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files])
    images = lambda idx: SimpleNamespace(pixels=pixels[idx], content_keys=[files[i].name for i in idx])  # noqa: E731
    with torch.no_grad():
        maps = backbone.eval().forward_intermediates(normalise(torch.from_numpy(pixels), prep),
                                                     indices=audit.FEATURE_LEVELS, intermediates_only=True)
    expected = torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1).numpy()
    assert expected.shape[1] == sum(m.shape[1] for m in maps) and len(maps) == audit.FEATURE_LEVELS

    backbone.train()
    cold = audit.audit_features(backbone, [images(list(range(6)))], prep, tmp_path, pretrained.cache_key,
                                torch.device("cpu"), engine)
    assert np.allclose(cold, expected[:6], rtol=1e-4, atol=1e-4) and backbone.training  # flags put back
    assert feature_batches == [(engine, 6)]  # no silent fallback to PyTorch
    feature_batches.clear()
    order = [9, 3, 7, 0, 8, 5, 6]
    warm = audit.audit_features(backbone, [images(order)], prep, tmp_path, pretrained.cache_key, torch.device("cpu"),
                                engine)
    assert np.allclose(warm, expected[order], rtol=1e-4, atol=1e-4)
    assert feature_batches == [(engine, 4)]  # only images 6..9, which the cache lacked


def test_the_audit_command_runs_on_the_engine_asked_for_and_engines_never_share_cached_features(planted_labels,
                                                                                                   tmp_path,
                                                                                                   feature_batches,
                                                                                                   capsys):
    """After `compare --engine torch` the audit must find its cache warm with `--engine torch`; rows computed
    by one engine are never read as another's (the key holds the engine)."""
    data, _ = planted_labels
    argv = ["audit", str(data), "--image-size", "32", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]  # ONNX Runtime runs on the CPU only
    computed = {}
    for engine in ("torch", "onnxruntime", "torch", "onnxruntime"):
        feature_batches.clear()
        assert main([*argv, "--engine", engine]) == 0
        computed.setdefault(engine, []).append(sum(n for _, n in feature_batches))
        assert {e for e, _ in feature_batches} <= {engine}
    pool = json.loads((next((tmp_path / "runs").iterdir()) / "audit.json").read_text())["n_images"]
    assert computed == {"torch": [pool, 0], "onnxruntime": [pool, 0]}  # each engine cold once, then warm
    capsys.readouterr()
    assert main([*argv, "--engine", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --engine: invalid choice" in err[0]


def test_compares_audit_section_is_the_audit_command_on_the_pretrained_backbone(finished_run, small_data, tmp_path):
    """compare fine-tunes the backbone in place: its Audit section must still read the pretrained one."""
    section = read_run_results(finished_run).audit
    folder = run_audit(tiny_config(small_data, tmp_path))
    command = json.loads((folder / "audit.json").read_text())
    assert section.probe_accuracy == pytest.approx(command["probe_accuracy"])
    assert [(i.file, i.reason) for i in section.issues] == [(i["file"], i["reason"]) for i in command["issues"]]
    assert [i.score for i in section.issues] == pytest.approx([i["score"] for i in command["issues"]], abs=1e-3)
