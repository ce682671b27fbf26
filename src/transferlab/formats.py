"""The versions of what transferlab writes, in a module that imports nothing heavy.

Reporting reads these to accept or refuse a folder; rebuilding a report must not import torch or timm.
"""

RUN_FORMAT_VERSION = 2    # a run's config.json/results.json; 2: recipes, a test split, the resolved environment
STUDY_FORMAT_VERSION = 1  # a study's config.json/results.json and every cell's key
MODEL_FORMAT_VERSION = 1  # model.json beside model.safetensors
