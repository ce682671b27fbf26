"""Run the frozen prefix of the network once per image and keep its outputs on disk.

The frozen phase caches pooled features (the whole backbone is the prefix); fine-tuning caches the
activations at the cut before the first trainable unit. The prefix is in eval mode with frozen
parameters, so a cached output equals what the full forward pass would compute.
"""

from pathlib import Path

import numpy as np
import timm
import torch
from transferlab.progress import progress_bar

from transferlab.data.images import Preprocessing
from transferlab.data.fingerprints import key_digest
from transferlab.data.row_store import RowStore, RowView
from transferlab.models.transfer_model import UNITS_LAYOUT, TransferModel
from transferlab.training.engines import computed_by, prefix_runner, resolve_engine
from transferlab.training.inputs import augment_pixels, epoch_rng


AUGMENT_VERSION = 1  # bump when augment_pixels changes: cached views > 0 hold its output


def prefix_outputs(model: TransferModel, last_units: list[int], pixels: RowView, content_keys: list[str],
                   prep: Preprocessing, cache_root: Path, model_key: str, device: torch.device, *,
                   view: int = 0, batch_size: int = 64, engine: str = "auto",
                   show_progress: bool = True) -> list[RowView]:
    """Outputs of units[:n] for each n in `last_units` (view 0 = unaugmented), computed only if missing.

    All requested cuts come out of one pass through the prefix; a cut whose cache is complete is neither
    computed nor written. `model_key` must identify the backbone and its weights; preprocessing, the cut,
    the view, the dtype and engine the prefix runs on and the timm/torch versions are added here, so any
    change to them lands in a different cache. The missing rows are computed on `engine` (training/engines.py: ONNX
    Runtime on CPU, parity-checked against PyTorch); a warm cache never builds an engine.
    """
    model.eval()
    size = prep.image_size_px
    with torch.no_grad():
        probes = model.prefixes(torch.zeros(1, 3, size, size, device=device), last_units)
    engine = resolve_engine(engine, device)
    depends_on = (UNITS_LAYOUT, model_key, prep.to_dict(), view, AUGMENT_VERSION if view else 0,
                  *computed_by(engine, device), timm.__version__, torch.__version__)
    stores = [RowStore(Path(cache_root) / "prefix" / key_digest(*depends_on, n), tuple(probe.shape[1:]), "float16")
              for n, probe in zip(last_units, probes)]
    todo = [(n, store) for n, store in zip(last_units, stores) if store.missing(content_keys)]
    missing = list(dict.fromkeys(k for _, store in todo for k in store.missing(content_keys)))
    if missing:
        position_of = {k: i for i, k in enumerate(content_keys)}
        positions = np.array([position_of[k] for k in missing])
        run = prefix_runner(model, [n for n, _ in todo], prep, device, engine, cache_root, model_key)
        chunks: list[list[np.ndarray]] = [[] for _ in todo]
        for start in progress_bar(range(0, len(positions), batch_size), desc="cache backbone outputs",
                                  unit="batch", leave=False, show=show_progress):
            chunk = positions[start:start + batch_size]
            x = torch.from_numpy(pixels[chunk])
            if view > 0:  # a view is a fixed augmentation of each image, seeded by its content
                x = torch.cat([augment_pixels(x[i:i + 1], view_rng(missing[start + i], view))
                               for i in range(len(chunk))])
            for out, y in zip(chunks, run(x)):
                out.append(y.float().cpu().numpy().astype(np.float16))
        for (_, store), out in zip(todo, chunks):
            store.add(missing, np.concatenate(out))  # the store skips the keys it already has
    return [store.rows(content_keys) for store in stores]


def view_rng(content_key: str, view: int) -> np.random.Generator:
    return epoch_rng(int(content_key[:12], 16), view, 2)
