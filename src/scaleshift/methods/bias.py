"""BitFit (Ben Zaken et al. 2022): train every bias (Linear, Conv and norm) plus the head."""
import torch.nn as nn

from .base import Method


class Bias(Method):
    name = "bias"
    description = "Train every bias of Linear, Conv and norm layers plus the head (BitFit)"
    supports_transformers = True

    def inject(self, model: nn.Module, opts: dict) -> list[str]:
        names = []
        for module_name, module in model.named_modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                names.append(f"{module_name}.bias" if module_name else "bias")
        return names


BIAS = Bias()
