"""Full fine-tuning: every parameter trains."""
import torch.nn as nn

from .base import Method


class Full(Method):
    name = "full"
    description = "Train every parameter (full fine-tuning)"
    supports_transformers = True

    def inject(self, model: nn.Module, opts: dict) -> list[str]:
        return [name for name, _ in model.named_parameters()]


FULL = Full()
