"""Build the embedded default dataset: Fashion-MNIST's "hard five" upper-body garment classes.

Reads Debian's `dataset-fashion-mnist` idx files (apt-get install dataset-fashion-mnist) and draws,
with a fixed seed, 100 training images per class from the official training file, and 100 validation plus
100 test images per class from the official test file (disjoint), so neither shares a source image with
training and the test part is never used for a choice.
Writes src/transferlab/data/fashion_mnist_hard5.npz (uint8 28x28 grayscale, a few hundred KB).
Fashion-MNIST is (c) Zalando SE, MIT licence.
"""

import argparse
import gzip
from pathlib import Path

import numpy as np

SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
OUTPUT = Path(__file__).resolve().parents[1] / "src/transferlab/data/fashion_mnist_hard5.npz"
# Fashion-MNIST label ids of the five classes that look most alike (tops and coats).
HARD_FIVE = {0: "T-shirt_top", 2: "Pullover", 3: "Dress", 4: "Coat", 6: "Shirt"}
IMAGES_PER_CLASS = 100
SEED = 20261123


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    n_dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * n_dims).reshape(shape)


def draw(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, exclude: set[int] = frozenset()
         ) -> tuple[np.ndarray, np.ndarray, set[int]]:
    """IMAGES_PER_CLASS per class, none of them in `exclude`; also returns the source indices drawn."""
    picked_images, picked_labels, drawn = [], [], set()
    for new_label, source_label in enumerate(HARD_FIVE):
        candidates = np.array([i for i in np.flatnonzero(labels == source_label) if i not in exclude])
        chosen = np.sort(rng.choice(candidates, size=IMAGES_PER_CLASS, replace=False))
        picked_images.append(images[chosen])
        picked_labels.append(np.full(IMAGES_PER_CLASS, new_label, dtype=np.uint8))
        drawn |= set(chosen.tolist())
    return np.concatenate(picked_images), np.concatenate(picked_labels), drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-dir", type=Path, default=SOURCE_DIR)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    train_x, train_y, _ = draw(read_idx(args.source_dir / "train-images-idx3-ubyte.gz"),
                               read_idx(args.source_dir / "train-labels-idx1-ubyte.gz"), rng)
    t10k_images = read_idx(args.source_dir / "t10k-images-idx3-ubyte.gz")
    t10k_labels = read_idx(args.source_dir / "t10k-labels-idx1-ubyte.gz")
    val_x, val_y, val_drawn = draw(t10k_images, t10k_labels, rng)
    test_x, test_y, _ = draw(t10k_images, t10k_labels, rng, exclude=val_drawn)
    np.savez_compressed(args.output, train_images=train_x, train_labels=train_y,
                        val_images=val_x, val_labels=val_y, test_images=test_x, test_labels=test_y,
                        class_names=np.array(list(HARD_FIVE.values())))
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB): "
          f"{len(train_y)} train + {len(val_y)} val + {len(test_y)} test images, classes {list(HARD_FIVE.values())}")


if __name__ == "__main__":
    main()
