"""Run the frozen prefix of the network once per image and keep its outputs on disk.

The frozen phase caches pooled features (the whole backbone is the prefix); fine-tuning caches the
activations at the cut before the first trainable unit. The prefix is in eval mode with frozen
parameters, so a cached output equals what the full forward pass would compute.
"""

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from transferlab.data.images import Preprocessing
from transferlab.data.row_store import RowStore, RowView, key_digest
from transferlab.models.transfer_model import TransferModel
from transferlab.training.inputs import ImageInputs, augment_pixels, epoch_rng, normalise
from transferlab.training.loop import autocast


def prefix_outputs(model: TransferModel, last_unit: int, pixels: RowView, content_keys: list[str],
                   prep: Preprocessing, cache_root: Path, model_key: str, device: torch.device, *,
                   view: int = 0, batch_size: int = 64, show_progress: bool = True) -> RowView:
    """Outputs of units[:last_unit] for these images (view 0 = unaugmented), computed only if missing.

    `model_key` must identify the backbone and its weights; preprocessing, the cut and the view are
    added here, so any change to them lands in a different cache.
    """
    model.eval()
    size = prep.image_size_px
    with torch.no_grad():
        probe = model.prefix(torch.zeros(1, 3, size, size, device=device), last_unit)
    store = RowStore(Path(cache_root) / "prefix" / key_digest(model_key, prep.to_dict(), last_unit, view),
                     tuple(probe.shape[1:]), "float16")
    missing = store.missing(content_keys)
    if missing:
        position_of = {k: i for i, k in enumerate(content_keys)}
        positions = np.array([position_of[k] for k in missing])
        images = ImageInputs(pixels, prep, device)
        chunks = []
        for start in tqdm(range(0, len(positions), batch_size), desc=f"cache prefix[:{last_unit}]",
                          unit="batch", leave=False, disable=not show_progress):
            chunk = positions[start:start + batch_size]
            if view == 0:
                x = images.batch(chunk, epoch=0)
            else:  # a view is a fixed augmentation of each image, seeded by its content
                raw = torch.from_numpy(pixels[chunk])
                x = torch.cat([augment_pixels(raw[i:i + 1], view_rng(missing[start + i], view))
                               for i in range(len(chunk))])
                x = normalise(x.to(device), prep)
            with torch.no_grad(), autocast(device):
                chunks.append(model.prefix(x, last_unit).float().cpu().numpy().astype(np.float16))
        store.add(missing, np.concatenate(chunks))
    return store.rows(content_keys)


def view_rng(content_key: str, view: int) -> np.random.Generator:
    return epoch_rng(int(content_key[:12], 16), view, 2)
