"""Decode any Pillow-readable file to RGB and resize it the way the backbone's weights expect."""

import math
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from transferlab.errors import error_text

INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}

MIN_IMAGE_SIZE_PX = 16    # below this a backbone's strided stem leaves almost nothing of the image
MAX_IMAGE_SIZE_PX = 1024  # the decode cache holds size² × 3 bytes per image (3 MB at 1024 px); timm's largest is 800


@dataclass(frozen=True)
class Preprocessing:
    """What the weights were trained with (timm's pretrained_cfg): eval resize + centre crop + normalise."""

    image_size_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(image_size_px=int(d["image_size_px"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   interpolation=d["interpolation"], crop_pct=float(d["crop_pct"]))

    def geometry_key(self) -> str:
        """Decoded pixels depend on these only; mean/std are applied later, per batch."""
        return f"{self.image_size_px}px-{self.interpolation}-crop{self.crop_pct:g}"


def normalised_nchw(pixels_nhwc: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 NHWC -> normalised float32 NCHW, C-contiguous (what ONNX Runtime takes): the same arithmetic as
    training's torch `normalise`, in NumPy, so that inference needs no torch."""
    mean = np.asarray(prep.mean, np.float32).reshape(1, 3, 1, 1) * 255
    std = np.asarray(prep.std, np.float32).reshape(1, 3, 1, 1) * 255
    return np.ascontiguousarray((pixels_nhwc.transpose(0, 3, 1, 2).astype(np.float32) - mean) / std)


class ImageDecodeError(Exception):
    """A file that cannot become an RGB image; the message says why, for the skipped-files list."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("LA", "RGBA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _refuse_decompression_bomb(img: Image.Image) -> None:
    """Pillow only warns between 1x and 2x its limit; a warnings filter cannot turn that into an error
    here, because filters are process-global and decode_images decodes in threads."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise Image.DecompressionBombError(
            f"Image size ({img.width * img.height} pixels) exceeds limit of {limit} pixels")


def _open_regular_file(path: Path) -> BinaryIO:
    """Opening a FIFO named x.png would block forever: open without blocking, then check what was opened
    (checking the path first would leave a window for it to be swapped)."""
    def opener(name: str, flags: int) -> int:
        fd = os.open(name, flags | getattr(os, "O_NONBLOCK", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ImageDecodeError("not a regular file")
        return fd
    return open(path, "rb", opener=opener)


def decode_rgb(path: Path) -> Image.Image:
    """First frame, EXIF orientation applied, any mode (16-bit, palette, alpha, CMYK) as 8-bit RGB."""
    try:
        with _open_regular_file(path) as file, Image.open(file) as img:
            _refuse_decompression_bomb(img)
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"larger than Pillow's decompression-bomb limit ({e})") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("cannot identify image file") from None  # the caller names the path
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(error_text(e)) from None


def resize_and_crop(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """timm's eval transform: shorter side to size/crop_pct, then centre crop; uint8 HxWx3."""
    size = prep.image_size_px
    scale_size = math.floor(size / prep.crop_pct)
    w, h = img.size
    if w <= h:
        new_w, new_h = scale_size, max(size, round(h * scale_size / w))
    else:
        new_w, new_h = max(size, round(w * scale_size / h)), scale_size
    img = img.resize((new_w, new_h), INTERPOLATIONS[prep.interpolation])
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.array(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def resized_rows(rows: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """Decoded square uint8 NHWC rows at another square size (Pillow antialiases when it shrinks)."""
    out = np.empty((len(rows), size, size, 3), np.uint8)
    for i, row in enumerate(rows):
        out[i] = np.asarray(Image.fromarray(row).resize((size, size), INTERPOLATIONS[interpolation]))
    return out


def load_for_model(path: Path, prep: Preprocessing) -> np.ndarray:
    return resize_and_crop(decode_rgb(path), prep)
