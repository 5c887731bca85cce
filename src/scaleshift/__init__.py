"""scaleshift: SSF (Scaling & Shifting Your Features) and its baselines on any timm model."""
__version__ = "0.1.0"

from .adapter_files import load_adapter, save_adapter  # noqa: E402
from .errors import ScaleshiftError  # noqa: E402
from .merge import merge, merge_check  # noqa: E402
from .methods import apply, methods, print_trainable_parameters, total_parameters, trainable_parameters  # noqa: E402
from .models import create_model  # noqa: E402

__all__ = ["create_model", "apply", "merge", "merge_check", "trainable_parameters",
           "total_parameters", "print_trainable_parameters", "save_adapter", "load_adapter",
           "methods", "ScaleshiftError", "__version__"]
