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


def prefix_outputs(model: TransferModel, last_units: list[int], pixels: RowView, content_keys: list[str],
                   prep: Preprocessing, cache_root: Path, model_key: str, device: torch.device, *,
                   view: int = 0, batch_size: int = 64, show_progress: bool = True) -> list[RowView]:
    """Outputs of units[:n] for each n in `last_units` (view 0 = unaugmented), computed only if missing.

    All requested cuts come out of one pass through the prefix. `model_key` must identify the backbone
    and its weights; preprocessing, the cut and the view are added here, so any change to them lands in
    a different cache.
    """
    model.eval()
    size = prep.image_size_px
    with torch.no_grad():
        probes = model.prefixes(torch.zeros(1, 3, size, size, device=device), last_units)
    stores = [RowStore(Path(cache_root) / "prefix" / key_digest(model_key, prep.to_dict(), n, view),
                       tuple(probe.shape[1:]), "float16") for n, probe in zip(last_units, probes)]
    missing = list(dict.fromkeys(k for store in stores for k in store.missing(content_keys)))
    if missing:
        position_of = {k: i for i, k in enumerate(content_keys)}
        positions = np.array([position_of[k] for k in missing])
        images = ImageInputs(pixels, prep, device)
        chunks: list[list[np.ndarray]] = [[] for _ in stores]
        for start in tqdm(range(0, len(positions), batch_size), desc="cache backbone outputs",
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
                for out, y in zip(chunks, model.prefixes(x, last_units)):
                    out.append(y.float().cpu().numpy().astype(np.float16))
        for store, out in zip(stores, chunks):
            rows = np.concatenate(out)
            todo = set(store.missing(missing))
            keep = [i for i, k in enumerate(missing) if k in todo]
            store.add([missing[i] for i in keep], rows[keep])
    return [store.rows(content_keys) for store in stores]


def view_rng(content_key: str, view: int) -> np.random.Generator:
    return epoch_rng(int(content_key[:12], 16), view, 2)
