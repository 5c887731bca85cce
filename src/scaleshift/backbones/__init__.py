"""Backbones timm lacks, registered with timm's model registry on import."""
from . import as_mlp  # noqa: F401
