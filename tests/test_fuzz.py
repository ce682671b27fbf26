"""Property tests of the data input layer: no input makes it fail any way other than the documented one.

decode_rgb: any bytes, under any image suffix, give an RGB image or ImageDecodeError.
scan_image_folder: any names the filesystem accepts give labels that match the class folder, or UserError.
"""

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from transferlab.data.images import ImageDecodeError, Preprocessing, decode_rgb, load_for_model
from transferlab.data.scan import IMAGE_SUFFIXES, is_hidden, scan_image_folder
from transferlab.errors import UserError

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PREP = Preprocessing(image_size_px=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _valid_image_bytes() -> list[bytes]:
    """Small real files in every format Pillow writes here: mutating them reaches deep into the decoders."""
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    files = []
    for fmt, options in [("PNG", {}), ("JPEG", {}), ("JPEG", {"exif": exif}), ("GIF", {}), ("BMP", {}),
                         ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}), ("WEBP", {})]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt, **options)
        files.append(buffer.getvalue())
    return files


VALID_IMAGES = _valid_image_bytes()
MAGIC_PREFIXES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                  b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x00\x00\x01\x00", b"8BPS", b"P6\n"]


@st.composite
def mutated_image(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "truncate", "insert"]))
        if action == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[position:]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


ANY_BYTES = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGIC_PREFIXES), st.binary(max_size=512)),
    mutated_image(),
)


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.*")  # Pillow's notes on corrupt EXIF/TIFF tags
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # a header claiming a huge size
@FUZZ
@given(data=ANY_BYTES, suffix=st.sampled_from(IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)))
def test_any_bytes_decode_to_rgb_or_raise_image_decode_error(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"file{suffix}"
        path.write_bytes(data)
        try:
            image = decode_rgb(path)
        except ImageDecodeError as e:
            assert str(e)  # it becomes the reason in the skipped-files list
            return
        assert image.mode == "RGB" and image.width > 0 and image.height > 0
        pixels = load_for_model(path, PREP)
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8


# Any component Linux accepts: no '/', no NUL, not '.'/'..', at most 255 bytes of UTF-8.
NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00")
NAME = st.text(NAME_CHARS, min_size=1, max_size=20).filter(
    lambda n: n not in (".", "..") and len(n.encode()) <= 200)
SUFFIX = st.sampled_from(IMAGE_SUFFIXES + (".JPG", ".Png", ".txt", ".json", "", ".jpg.bak"))
FILE_NAME = st.builds(lambda stem, suffix: stem + suffix, NAME, SUFFIX).filter(lambda n: len(n.encode()) <= 255)
FOLDER_TREE = st.dictionaries(
    NAME,  # class folder
    st.lists(st.tuples(st.one_of(st.none(), NAME), FILE_NAME), max_size=4),  # (optional sub-folder, file)
    max_size=4,
)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


@FUZZ
@given(tree=FOLDER_TREE)
def test_any_names_give_labels_of_their_class_folder_or_a_user_error(tree):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        written: set[Path] = set()
        for class_name, files in tree.items():
            (root / class_name).mkdir(exist_ok=True)
            for sub, name in files:
                folder = root / class_name / sub if sub else root / class_name
                if folder.exists() and not folder.is_dir() or (folder / name).is_dir():
                    continue  # a file and a folder drew the same name
                folder.mkdir(exist_ok=True)
                (folder / name).write_bytes(b"")
                written.add(folder / name)

        visible = lambda p: not any(is_hidden(part) for part in p.relative_to(root).parts)  # noqa: E731
        classes = sorted(c for c in tree if not is_hidden(c))
        expected = {p for p in written if visible(p) and _is_image(p)}
        expected_error = len(classes) < 2 or any(
            not any(p.relative_to(root).parts[0] == c for p in expected) for c in classes)
        try:
            folder = scan_image_folder(root)
        except UserError as e:
            assert expected_error, f"unexpected UserError: {e}"
            assert f"'{root}'" in str(e) and "\n" not in str(e)
            return
        assert not expected_error
        assert list(folder.class_names) == classes
        assert {im.path for im in folder.images} == expected
        for im in folder.images:
            assert folder.class_names[im.label] == im.path.relative_to(root).parts[0]
        assert set(folder.ignored_files) == {p for p in written if visible(p) and not _is_image(p)}
        assert len(folder.images) == len(expected)  # nothing listed twice
