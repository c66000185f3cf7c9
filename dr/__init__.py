"""dr: train, evaluate and export dense retrievers."""

import logging
import os

# oneDNN (fp32 linear layers on CPU, dr/models/cpu_linear.py, and every bf16 product) keeps a
# compiled primitive per distinct shape in two caches of 1,024 entries each (oneDNN's and ideep's),
# about 0.6 MB per shape. Training batches padded to their own length make new shapes every step,
# so a 57-step run grew by 0.3 GiB. 128 entries keep a step's reuse (forward, backward, the
# recomputed blocks) and bound the caches to about 60 MB. Read at oneDNN's first use, so set
# before any model runs; a value set by the user wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")
os.environ.setdefault("LRU_CACHE_CAPACITY", "128")

from dr.config import register_resolvers  # noqa: E402

# FAISS logs at INFO which CPU builds it tried ("Could not load library with AVX512 support ...");
# that is not news to a user, so it stays below the default level (conf/hydra/default.yaml too).
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

register_resolvers()

__version__ = "0.1.0"
