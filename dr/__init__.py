"""dr: train, evaluate and export dense retrievers."""

import logging

from dr.config import register_resolvers

# FAISS logs at INFO which CPU builds it tried ("Could not load library with AVX512 support ...");
# that is not news to a user, so it stays below the default level (conf/hydra/default.yaml too).
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

register_resolvers()

__version__ = "0.1.0"
