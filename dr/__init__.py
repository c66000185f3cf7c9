"""dr: train, evaluate and export dense retrievers."""

from dr.config import register_resolvers

register_resolvers()

__version__ = "0.1.0"
