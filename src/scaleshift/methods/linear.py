"""Linear probing: train the classifier head only."""
from . import Method, register


class Linear(Method):
    name = "linear"
    description = "Train the classifier head only (linear probing)"


register(Linear())
