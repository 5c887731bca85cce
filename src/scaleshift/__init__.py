"""scaleshift: SSF (Scaling & Shifting Your Features) and its baselines on any timm model."""
from .adapter_files import load_adapter, save_adapter
from .errors import ScaleshiftError
from .merge import merge, merge_check
from .methods import apply, methods, print_trainable_parameters, total_parameters, trainable_parameters
from .models import create_model
from .version import __version__

__all__ = ["create_model", "apply", "merge", "merge_check", "trainable_parameters",
           "total_parameters", "print_trainable_parameters", "save_adapter", "load_adapter",
           "methods", "ScaleshiftError", "__version__"]
