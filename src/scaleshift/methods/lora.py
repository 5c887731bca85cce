"""LoRA (Hu et al. 2022) through PEFT's own layers (`peft.inject_adapter_in_model`), which work
on timm models as they are and merge by adding B @ A * alpha / rank to the base weight."""
from __future__ import annotations

import torch.nn as nn

from ..errors import ScaleshiftError
from ..models import classifier_parameter_names
from . import Method, Option, register, replace_module


class LoRA(Method):
    name = "lora"
    description = "Low-rank updates of the attention qkv and MLP layers (Hu et al. 2022, via PEFT)"
    options = {
        "rank": Option(8, "rank r of the update", minimum=1),
        "alpha": Option(8.0, "the update is scaled by alpha / rank", minimum=0.0),
        "dropout": Option(0.0, "dropout on the LoRA branch input", minimum=0.0),
        "targets": Option(["fc1", "fc2", "qkv"], "module-name suffixes that get LoRA", is_list=True),
    }

    def inject(self, model: nn.Module, opts: dict) -> list[str]:
        from peft import LoraConfig, inject_adapter_in_model

        head = {n.rpartition(".")[0] for n in classifier_parameter_names(model)}
        targets = [name for name, module in model.named_modules()
                   if name.rpartition(".")[2] in opts["targets"] and name not in head
                   and isinstance(module, (nn.Linear, nn.Conv2d))]
        if not targets:
            raise ScaleshiftError(f"lora: no Linear/Conv2d named {opts['targets']} in "
                                  f"{type(model).__name__}; set targets=name1,name2")
        config = LoraConfig(r=opts["rank"], lora_alpha=opts["alpha"], lora_dropout=opts["dropout"],
                            target_modules=targets)
        inject_adapter_in_model(config, model)
        return [n for n, _ in model.named_parameters() if ".lora_" in n]

    def merge(self, model: nn.Module) -> list[dict]:
        from peft.tuners.lora import LoraLayer

        for name, module in list(model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge(safe_merge=True)
                replace_module(model, name, module.get_base_layer())
        return []


register(LoRA())
