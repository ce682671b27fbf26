"""A messy real-world folder: every bad file is skipped and named, every odd-but-valid one decodes.

Each case is generated here with Pillow or raw bytes; what is asserted is what the user gets: the
skipped file's path in the warning and in DecodedImages.skipped, uint8 HxWx3 pixels at the requested
size, or a one-line UserError naming the folder.
"""

import contextlib
import io
import json
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab import cli
from transferlab.data.decoded import DecodedImages, decode_images
from transferlab.data.images import Preprocessing, decode_rgb, load_for_model
from transferlab.data.scan import ImageFolder, LabelledImage, scan_image_folder
from transferlab.data.split import split_stratified
from transferlab.errors import UserError
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.datasets import scan_folders

SIZE_PX = 32
PREP = Preprocessing(image_size_px=SIZE_PX, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def write_image(path: Path, size=(16, 16), seed: int = 0, fmt: str | None = None) -> Path:
    """Random RGB noise, so no two images share a content hash (the caches key on content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def jpeg_bytes(size=(64, 64), seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def decode(paths: list[Path], cache_dir: Path, strict: bool = False) -> tuple[DecodedImages, list[str]]:
    """decode_images plus the warning texts the user would see.

    ResourceWarnings are left out: they come from the garbage collector (row_store.py's np.save leaves a
    file handle to it), not from the data, and would make these assertions depend on GC timing.
    """
    images = [LabelledImage(p, 0) for p in paths]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = decode_images(images, PREP, cache_dir, strict=strict, show_progress=False)
    return decoded, [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)]


def all_pixels(decoded: DecodedImages) -> np.ndarray:
    return decoded.pixels[np.arange(len(decoded.pixels))]


def assert_close(pixel, rgb, tolerance: int = 40) -> None:
    assert np.abs(np.asarray(pixel, dtype=int) - np.asarray(rgb)).max() <= tolerance, (pixel, rgb)


# --- files that cannot become images: skipped, named, and an error under --strict ---------------------

def truncated_jpeg(folder: Path, monkeypatch) -> Path:
    data = jpeg_bytes()
    (path := folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return path


def zero_bytes(folder: Path, monkeypatch) -> Path:
    (path := folder / "empty.jpg").write_bytes(b"")
    return path


def text_named_jpg(folder: Path, monkeypatch) -> Path:
    (path := folder / "notes.jpg").write_text("shopping list: milk, eggs\n")
    return path


def html_saved_as_png(folder: Path, monkeypatch) -> Path:
    (path := folder / "download.png").write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    return path


# Tiny enough for a 40x40 image to trip it, big enough for the 32x32 crop (Pillow checks crops too).
TINY_PIXEL_LIMIT = 1100


def bomb_over_twice_the_limit(folder: Path, monkeypatch) -> Path:
    """Pillow raises DecompressionBombError itself above 2x MAX_IMAGE_PIXELS."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", TINY_PIXEL_LIMIT)
    return write_image(folder / "bomb.png", size=(64, 64))  # 4096 px


def bomb_just_over_the_limit(folder: Path, monkeypatch) -> Path:
    """Between 1x and 2x Pillow only warns; the limit must still hold."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", TINY_PIXEL_LIMIT)
    return write_image(folder / "bomb.png", size=(40, 40))  # 1600 px


def symlink_to_itself(folder: Path, monkeypatch) -> Path:
    (path := folder / "ring.jpg").symlink_to("ring.jpg")
    return path


def named_pipe(folder: Path, monkeypatch) -> Path:
    """A FIFO named like an image: reading it would block forever."""
    os.mkfifo(path := folder / "pipe.jpg")
    return path


def unreadable(folder: Path, monkeypatch) -> Path:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading the file")
    path = write_image(folder / "locked.png", seed=7)
    path.chmod(0)
    return path


BAD_FILES = {
    truncated_jpeg: "image file is truncated",
    zero_bytes: "cannot identify image file",
    text_named_jpg: "cannot identify image file",
    html_saved_as_png: "cannot identify image file",
    bomb_over_twice_the_limit: "decompression-bomb limit",
    bomb_just_over_the_limit: "decompression-bomb limit",
    symlink_to_itself: "cannot read: Too many levels of symbolic links",
    named_pipe: "not a regular file",
    unreadable: "ermission denied",
}


@contextlib.contextmanager
def pipe_readers_unblocked_after(seconds: float, path: Path):
    """Any reader still hanging on a FIFO after `seconds` gets EOF (again and again: the hash and the
    decode each open it), so a regression fails the test instead of hanging it."""
    done = threading.Event()

    def unblock():
        while not done.wait(seconds):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # not a FIFO, or no reader waiting

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()


@pytest.mark.parametrize("make_bad", list(BAD_FILES), ids=lambda f: f.__name__)
def test_bad_file_is_skipped_and_named(make_bad, tmp_path, monkeypatch):
    folder = tmp_path / "cat"
    good = write_image(folder / "good.png")
    bad = make_bad(folder, monkeypatch)
    with pipe_readers_unblocked_after(5, bad):
        decoded, messages = decode([good, bad], tmp_path / "cache")

    assert [s.path for s in decoded.skipped] == [bad]
    assert BAD_FILES[make_bad] in decoded.skipped[0].reason
    assert f"skipping '{bad}': {decoded.skipped[0].reason}" in messages
    assert decoded.images == [LabelledImage(good, 0)]
    pixels = all_pixels(decoded)
    assert pixels.shape == (1, SIZE_PX, SIZE_PX, 3) and pixels.dtype == np.uint8

    with pytest.raises(UserError, match="cannot decode") as error:
        decode([good, bad], tmp_path / "cache", strict=True)
    assert str(bad) in str(error.value) and "\n" not in str(error.value)


def test_decompression_bomb_limit_holds_when_decoding_in_threads(tmp_path, monkeypatch):
    """decode_images uses threads; a process-global warnings filter once let some bombs through.

    The race needs unlucky timing, so several rounds (failed files are never cached: each round
    decodes all of them again); against the old code about 1 round in 4 let a bomb through.
    """
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", TINY_PIXEL_LIMIT)
    bombs = [write_image(tmp_path / f"bomb{i}.png", size=(40, 40), seed=i) for i in range(64)]
    for _ in range(8):
        decoded, messages = decode(bombs, tmp_path / "cache")
        assert decoded.images == []
        assert sorted(s.path for s in decoded.skipped) == sorted(bombs)
        assert all(f"skipping '{b}'" in " ".join(messages) for b in bombs)


# --- odd but valid files: decode to 8-bit RGB at the requested size ---------------------------------

def sixteen_bit_png(path: Path) -> tuple[Path, tuple, tuple]:
    values = np.zeros((16, 16), np.uint16)
    values[:, 8:] = 65535
    Image.fromarray(values).save(path := path.with_suffix(".png"))
    assert Image.open(path).mode.startswith("I;16")
    return path, (0, 0, 0), WHITE


def cmyk_jpeg(path: Path) -> tuple[Path, tuple, tuple]:
    image = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # cyan
    image.paste((0, 255, 255, 0), (8, 0, 16, 16))  # red
    image.save(path := path.with_suffix(".jpg"))
    return path, (0, 255, 255), RED


def palette_png_with_transparency(path: Path) -> tuple[Path, tuple, tuple]:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 255, 0, *BLUE] + [0] * 762)
    image.paste(1, (8, 0, 16, 16))
    image.save(path := path.with_suffix(".png"), transparency=0)  # green index 0 is see-through
    return path, WHITE, BLUE


def la_png(path: Path) -> tuple[Path, tuple, tuple]:
    image = Image.new("LA", (16, 16), (0, 0))  # transparent black
    image.paste((0, 255), (8, 0, 16, 16))  # opaque black
    image.save(path := path.with_suffix(".png"))
    return path, WHITE, (0, 0, 0)


def rgba_png(path: Path) -> tuple[Path, tuple, tuple]:
    image = Image.new("RGBA", (16, 16), (*RED, 0))
    image.paste((*RED, 255), (8, 0, 16, 16))
    image.save(path := path.with_suffix(".png"))
    return path, WHITE, RED


def animated_gif(path: Path) -> tuple[Path, tuple, tuple]:
    first = Image.new("RGB", (16, 16), RED)
    first.paste(BLUE, (8, 0, 16, 16))
    later = [Image.new("RGB", (16, 16), (0, 255, 0)), Image.new("RGB", (16, 16), WHITE)]
    first.save(path := path.with_suffix(".gif"), save_all=True, append_images=later, duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    return path, RED, BLUE


def grayscale_bilevel_bmp(path: Path) -> tuple[Path, tuple, tuple]:
    image = Image.new("1", (16, 16), 0)
    image.paste(1, (8, 0, 16, 16))
    image.save(path := path.with_suffix(".bmp"))
    return path, (0, 0, 0), WHITE


@pytest.mark.parametrize("make", [sixteen_bit_png, cmyk_jpeg, palette_png_with_transparency, la_png, rgba_png,
                                  animated_gif, grayscale_bilevel_bmp], ids=lambda f: f.__name__)
def test_unusual_modes_decode_to_8bit_rgb(make, tmp_path):
    """Left half one colour, right half another: checks the conversion, not just the shape."""
    path, left, right = make(tmp_path / "image")
    decoded, messages = decode([path], tmp_path / "cache")
    assert decoded.skipped == [] and messages == []
    pixels = all_pixels(decoded)[0]
    assert pixels.shape == (SIZE_PX, SIZE_PX, 3) and pixels.dtype == np.uint8
    assert_close(pixels[SIZE_PX // 2, 2], left)
    assert_close(pixels[SIZE_PX // 2, SIZE_PX - 3], right)


def test_exif_orientation_is_applied_before_resizing(tmp_path):
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(path := tmp_path / "phone.jpg", exif=exif)

    upright = decode_rgb(path)
    assert upright.mode == "RGB" and upright.size == (20, 40)
    assert_close(upright.getpixel((10, 2)), RED)  # the left half is now on top
    assert_close(upright.getpixel((10, 37)), BLUE)
    pixels = load_for_model(path, PREP)
    assert pixels.shape == (SIZE_PX, SIZE_PX, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("size", [(1, 1), (10000, 50), (50, 10000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_extreme_sizes_decode_to_the_requested_size(size, tmp_path):
    path = write_image(tmp_path / "odd.png", size=size)
    decoded, _ = decode([path], tmp_path / "cache")
    assert decoded.skipped == []
    pixels = all_pixels(decoded)
    assert pixels.shape == (1, SIZE_PX, SIZE_PX, 3) and pixels.dtype == np.uint8


# --- folder layout -------------------------------------------------------------------------------------

def relative(folder: ImageFolder, root: Path) -> list[tuple[str, int]]:
    return sorted((str(im.path.relative_to(root)), im.label) for im in folder.images)


def test_unicode_space_and_emoji_names(tmp_path):
    root = tmp_path / "données d'entraînement"
    names = {"chat noir 🐈‍⬛": ["été 2024.jpg", "🐾 patte.png"], "Ünïcødé  dog": ["a b c.PNG", "日本語.jpeg"]}
    for i, (class_name, files) in enumerate(sorted(names.items())):
        for j, name in enumerate(files):
            write_image(root / class_name / name, seed=10 * i + j, fmt="PNG")
    folder = scan_image_folder(root)
    assert folder.class_names == tuple(sorted(names))
    expected = sorted((f"{c}/{f}", i) for i, c in enumerate(sorted(names)) for f in names[c])
    assert relative(folder, root) == expected
    decoded, messages = decode([im.path for im in folder.images], tmp_path / "cache")
    assert decoded.skipped == [] and messages == []
    assert all_pixels(decoded).shape == (4, SIZE_PX, SIZE_PX, 3)


def test_newlines_in_names_keep_messages_on_one_line(tmp_path):
    """Linux allows '\n' in a name; the warning and the error still name the file, escaped, on one line."""
    root = tmp_path / "data"
    good = write_image(root / "a" / "fine.png", seed=1)
    bad = root / "a" / "two\nlines.jpg"
    bad.write_text("not an image")
    decoded, messages = decode([good, bad], tmp_path / "cache")
    assert [s.path for s in decoded.skipped] == [bad]
    [message] = [m for m in messages if m.startswith("skipping")]
    assert "\n" not in message and f"'{root}/a/two\\nlines.jpg'" in message
    with pytest.raises(UserError) as error:
        decode([good, bad], tmp_path / "cache", strict=True)
    assert "\n" not in str(error.value) and "two\\nlines.jpg" in str(error.value)

    (root / "line\nbreak").mkdir()
    with pytest.raises(UserError) as error:
        scan_image_folder(root)
    assert str(error.value).splitlines() == [str(error.value)]
    assert f"'{root}'" in str(error.value) and "'line\\nbreak'" in str(error.value)


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = tmp_path / "data"
    for name in ("a", "b"):
        write_image(root / name / "1.png", seed=ord(name))
        (root / name / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
        (root / name / "._1.png").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
        write_image(root / name / ".ipynb_checkpoints" / "1-checkpoint.png", seed=99)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    write_image(root / ".thumbnails" / "t.png", seed=98)  # a hidden folder is not a class
    folder = scan_image_folder(root)
    assert folder.class_names == ("a", "b")
    assert relative(folder, root) == [("a/1.png", 0), ("b/1.png", 1)]
    assert folder.ignored_files == ()


def test_macosx_zip_folder_is_a_named_error(tmp_path):
    """Unzipping a macOS archive leaves __MACOSX/ with only '._' files: the user is told to remove it."""
    root = tmp_path / "unzipped"
    for name in ("a", "b"):
        write_image(root / name / "1.png", seed=ord(name))
        (root / "__MACOSX" / name).mkdir(parents=True, exist_ok=True)
        (root / "__MACOSX" / name / "._1.png").write_bytes(b"\x00\x05\x16\x07")
    with pytest.raises(UserError) as error:
        scan_image_folder(root)
    assert f"'{root}'" in str(error.value) and "'__MACOSX'" in str(error.value)


def test_nested_sub_folders_belong_to_their_class(tmp_path):
    root = tmp_path / "data"
    write_image(root / "a" / "top.png", seed=1)
    write_image(root / "a" / "2019" / "summer" / "deep.png", seed=2)
    write_image(root / "b" / "x" / "only_nested.png", seed=3)
    (root / "a" / "2019" / "notes.txt").write_text("field notes")
    folder = scan_image_folder(root)
    assert relative(folder, root) == [("a/2019/summer/deep.png", 0), ("a/top.png", 0), ("b/x/only_nested.png", 1)]
    assert folder.ignored_files == (root / "a" / "2019" / "notes.txt",)


def test_files_beside_the_class_folders_are_listed_as_ignored(tmp_path):
    """A README or a CSV beside the class folders, or a file named like a class, vanished without a trace."""
    root = tmp_path / "data"
    write_image(root / "a" / "1.png", seed=1)
    write_image(root / "b" / "1.png", seed=2)
    write_image(root / "loose.png", seed=3)
    (root / "README.txt").write_text("how these were collected")
    (root / "c").write_text("a file where a class folder was meant")
    folder = scan_image_folder(root)
    assert folder.class_names == ("a", "b")
    assert folder.ignored_files == (root / "README.txt", root / "c", root / "loose.png")


def test_a_broken_link_beside_the_class_folders_is_one_line_naming_it(tmp_path):
    """A class folder that moved away, linked from the data folder: training without it would drop a class."""
    root = tmp_path / "data"
    write_image(root / "a" / "1.png", seed=1)
    write_image(root / "b" / "1.png", seed=2)
    (root / "c").symlink_to(tmp_path / "moved" / "c")
    with pytest.raises(UserError) as error:
        scan_image_folder(root)
    assert str(error.value) == (f"'{root / 'c'}' is a link to '{tmp_path / 'moved' / 'c'}', which does not exist; "
                                "fix the link or remove it")


def test_split_folders_given_as_a_data_folder_are_one_line_with_the_options_that_read_them(tmp_path):
    """DATA/train/<class>, DATA/val/<class>, DATA/test/<class> (a common download) trained a 3-class classifier
    of which split an image came from, named 'test', 'train' and 'val'."""
    root = tmp_path / "download"
    for split in ("train", "Valid", "test"):
        for name in ("cat", "dog"):
            write_image(root / split / name / "1.png", seed=len(split) + ord(name[0]))
    with pytest.raises(UserError) as error:
        scan_image_folder(root)
    assert str(error.value) == (f"'{root}' holds split folders ('Valid', 'test', 'train'), not classes; give --train "
                                f"'{root / 'train'}' --val '{root / 'Valid'}' --test '{root / 'test'}'")
    shutil.rmtree(root / "Valid")
    with pytest.raises(UserError) as error:
        scan_image_folder(root)
    assert str(error.value) == (f"'{root}' holds split folders ('test', 'train'), not classes; give '{root / 'train'}' "
                                f"as the data folder and --test '{root / 'test'}'")


def test_classes_named_like_splits_with_their_images_inside_are_classes(tmp_path):
    root = tmp_path / "vehicles"
    write_image(root / "train" / "1.png", seed=1)
    write_image(root / "test" / "x" / "1.png", seed=2)  # a sub-folder in one class only: still images of a class
    assert scan_image_folder(root).class_names == ("test", "train")


def test_a_val_or_test_folder_without_a_class_is_said_once_each(tmp_path):
    """Validation without a class cannot choose for it, and a test without it says nothing of it: allowed, never
    unsaid (before: not a word)."""
    for split, classes in (("train", "abc"), ("val", "ab"), ("test", "a")):
        for name in classes:
            write_image(tmp_path / split / name / "1.png", seed=ord(name))
    cfg = CompareConfig(train_dir=tmp_path / "train", val_dir=tmp_path / "val", test_dir=tmp_path / "test",
                        runs_dir=tmp_path / "runs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan_folders(cfg)
    val, test = tmp_path / "val", tmp_path / "test"
    assert [str(w.message) for w in caught] == [
        f"--val '{val}' has no folder of class 'c'; validation cannot choose for it: add '{val / 'c'}'",
        f"--test '{test}' has no folder of class 'b', 'c'; test accuracy says nothing of them: add '{test / 'b'}'"]


def test_symlink_loops_inside_a_class_terminate(tmp_path):
    root = tmp_path / "data"
    write_image(root / "a" / "1.png", seed=1)
    write_image(root / "b" / "1.png", seed=2)
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)
    (root / "a" / "sub").mkdir()
    (root / "a" / "sub" / "up").symlink_to("../..", target_is_directory=True)
    (root / "b" / "ring.jpg").symlink_to("ring.jpg")  # a file symlink that loops

    result = {}
    scan = threading.Thread(target=lambda: result.update(folder=scan_image_folder(root)), daemon=True)
    scan.start()
    scan.join(timeout=20)
    assert not scan.is_alive(), "scan_image_folder did not terminate on a symlink loop"
    folder = result["folder"]
    assert relative(folder, root) == [("a/1.png", 0), ("b/1.png", 1), ("b/ring.jpg", 1)]

    decoded, messages = decode([im.path for im in folder.images], tmp_path / "cache")
    assert [s.path for s in decoded.skipped] == [root / "b" / "ring.jpg"]
    assert any(f"skipping '{root / 'b' / 'ring.jpg'}'" in m for m in messages)
    assert len(decoded.images) == 2


def test_a_class_with_a_single_image_stays_in_training(tmp_path):
    root = tmp_path / "data"
    write_image(root / "rare" / "only.png", seed=1)
    for i in range(5):
        write_image(root / "common" / f"{i}.png", seed=10 + i)
    folder = scan_image_folder(root)
    assert folder.class_names == ("common", "rare")
    decoded, _ = decode([im.path for im in folder.images], tmp_path / "cache")
    assert len(decoded.images) == 6
    train, val, _ = split_stratified(list(folder.images), 0.2, seed=0)
    assert [im.path.name for im in train if im.label == 1] == ["only.png"]
    assert all(im.label == 0 for im in val) and len(val) == 1


def test_one_to_fifty_class_imbalance(tmp_path):
    root = tmp_path / "data"
    write_image(root / "few" / "0.png", size=(8, 8), seed=0)
    for i in range(50):
        write_image(root / "many" / f"{i:02d}.png", size=(8, 8), seed=100 + i)
    folder = scan_image_folder(root)
    assert np.bincount([im.label for im in folder.images]).tolist() == [1, 50]  # 'few' sorts first
    decoded, _ = decode([im.path for im in folder.images], tmp_path / "cache")
    assert decoded.skipped == [] and all_pixels(decoded).shape == (51, SIZE_PX, SIZE_PX, 3)
    train, val, _ = split_stratified(list(folder.images), 0.2, seed=0)
    assert np.bincount([im.label for im in train], minlength=2).tolist() == [1, 40]
    assert np.bincount([im.label for im in val], minlength=2).tolist() == [0, 10]


# --- the CLI on a messy folder, and its one-line errors ---------------------------------------------------

TINY_COMPARE = ["--image-size", "32", "--scratch-epochs", "1", "--frozen-epochs", "1", "--finetune-epochs", "1",
                "--unfreeze-last", "2", "--quiet", "--backbone", "tf_efficientnet_lite0"]


def run_cli(data: Path, tmp_path: Path, monkeypatch) -> int:
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # cli.main replaces it globally
    return cli.main(["compare", str(data), "--runs-dir", str(tmp_path / "runs"), "--cache-dir",
                     str(tmp_path / "cache"), *TINY_COMPARE])


def test_cli_compare_on_a_messy_folder_skips_and_reports_bad_files(tmp_path, monkeypatch, capsys):
    root = tmp_path / "messy"
    for c, name in enumerate(("a", "b")):
        for i in range(6):
            write_image(root / name / f"{i}.png", size=(12, 12), seed=100 * c + i)
    bad = [root / "a" / "truncated.jpg", root / "a" / "notes.jpg", root / "b" / "empty.png", root / "b" / "page.png"]
    data = jpeg_bytes()
    bad[0].write_bytes(data[: len(data) // 2])
    bad[1].write_text("not an image")
    bad[2].write_bytes(b"")
    bad[3].write_text("<html><body>404</body></html>")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    (root / "b" / "readme.txt").write_text("where these came from")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = run_cli(root, tmp_path, monkeypatch)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in out + err and "error:" not in err
    [results_path] = (tmp_path / "runs").glob("*/results.json")
    data_section = json.loads(results_path.read_text())["data"]
    assert sorted(s["path"] for s in data_section["skipped"]) == sorted(map(str, bad))
    assert all(s["reason"] for s in data_section["skipped"])
    assert data_section["ignored_files"] == [str(root / "b" / "readme.txt")]
    assert (f"1 file was ignored: not images inside a class folder (first: `{root / 'b' / 'readme.txt'}`)."
            in (results_path.parent / "report.md").read_text())
    assert data_section["class_names"] == ["a", "b"]
    assert data_section["n_train"] + data_section["n_val"] == 12
    messages = " ".join(str(w.message) for w in caught)
    assert all(f"skipping '{p}'" in messages for p in bad)


def missing_folder(tmp: Path) -> Path:
    return tmp / "no_such_folder"


def file_instead_of_folder(tmp: Path) -> Path:
    (path := tmp / "photos.zip").write_bytes(b"PK\x03\x04")
    return path


def empty_class_folder(tmp: Path) -> Path:
    for i in range(3):
        write_image(tmp / "data" / "cats" / f"{i}.png", seed=i)
    (tmp / "data" / "dogs").mkdir()
    return tmp / "data"


def one_class_only(tmp: Path) -> Path:
    for i in range(3):
        write_image(tmp / "data" / "cats" / f"{i}.png", seed=i)
    return tmp / "data"


def no_images_at_all(tmp: Path) -> Path:
    for name in ("cats", "dogs"):
        (tmp / "data" / name).mkdir(parents=True)
        (tmp / "data" / name / "readme.txt").write_text("todo: add photos")
    return tmp / "data"


def empty_data_folder(tmp: Path) -> Path:
    (tmp / "data").mkdir()
    return tmp / "data"


def loose_images_without_class_folders(tmp: Path) -> Path:
    for i in range(3):
        write_image(tmp / "data" / f"{i}.png", seed=i)
    return tmp / "data"


CLI_ERRORS = {
    missing_folder: "does not exist",
    file_instead_of_folder: "is a file, not a folder",
    empty_class_folder: "class folders with no images",
    one_class_only: "found only one class folder ('cats')",
    no_images_at_all: "'cats' (1 non-image files), 'dogs' (1 non-image files)",
    empty_data_folder: "found no class folders",
    loose_images_without_class_folders: "found 3 loose image files but no class folders",
}


@pytest.mark.parametrize("make", list(CLI_ERRORS), ids=lambda f: f.__name__)
def test_cli_data_errors_are_one_line_and_exit_2(make, tmp_path, monkeypatch, capsys):
    data = make(tmp_path)
    code = run_cli(data, tmp_path, monkeypatch)
    out, err = capsys.readouterr()
    assert code == cli.EXIT_USER_ERROR
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert f"'{data}'" in lines[0] and CLI_ERRORS[make] in lines[0]
    if make is empty_class_folder:
        assert "'dogs'" in lines[0]
