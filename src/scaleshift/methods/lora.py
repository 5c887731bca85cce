"""LoRA (Hu et al. 2022) through PEFT's own layers (`peft.inject_adapter_in_model`), which work
on timm models as they are and merge by adding B @ A * alpha / rank to the base weight."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ScaleshiftError
from ..extras import require
from ..models import classifier_parameter_names
from . import Method, Option, plain_key, register


class LoRA(Method):
    name = "lora"
    description = "Low-rank updates of the attention qkv and MLP layers (Hu et al. 2022, via PEFT)"
    options = {
        "rank": Option(8, "rank r of the update", minimum=1),
        "alpha": Option(8.0, "the update is scaled by alpha / rank", minimum=0.0),
        "dropout": Option(0.0, "dropout on the LoRA branch input", minimum=0.0, maximum=1.0),
        "targets": Option(["fc1", "fc2", "qkv"], "module-name suffixes that get LoRA", is_list=True),
    }

    def inject(self, model: nn.Module, opts: dict) -> list[str]:
        peft = require("peft", "method lora")

        head = {n.rpartition(".")[0] for n in classifier_parameter_names(model)}
        targets = [name for name, module in model.named_modules()
                   if name.rpartition(".")[2] in opts["targets"] and name not in head
                   and isinstance(module, (nn.Linear, nn.Conv2d))]
        if not targets:
            raise ScaleshiftError(f"lora: no Linear/Conv2d named {opts['targets']} in "
                                  f"{type(model).__name__}; set targets=name1,name2")
        config = peft.LoraConfig(r=opts["rank"], lora_alpha=opts["alpha"], lora_dropout=opts["dropout"],
                            target_modules=targets)
        peft.inject_adapter_in_model(config, model)
        return [n for n, _ in model.named_parameters() if ".lora_" in n]

    def merge_state(self, base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
                    options: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """W' = W + (B @ A) * alpha / rank, for Linear and Conv2d (the update of a k x k conv is
        A's kernel followed by B's 1 x 1 mixing, composed into one kernel), as PEFT merges."""
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        plain_trained = {}
        for key, value in trained.items():
            module, sep, rest = key.partition(".lora_")
            if sep:   # <module>.lora_A.<adapter name>.weight
                pairs.setdefault(plain_key(module + "."), {})[rest.split(".")[0]] = value
            else:
                plain_trained[key] = value
        merged, _ = super().merge_state(base, plain_trained, options)
        scaling = options["alpha"] / options["rank"]
        for prefix, pair in pairs.items():
            weight, a, b = merged[prefix + "weight"], pair["A"], pair["B"]
            if weight.ndim == 2:
                delta = b @ a
            elif weight.shape[2:] == (1, 1):
                delta = (b.flatten(1) @ a.flatten(1))[:, :, None, None]
            else:
                delta = F.conv2d(a.transpose(0, 1), b).transpose(0, 1)
            merged[prefix + "weight"] = weight + (delta * scaling).to(weight.dtype)
        return merged, []


register(LoRA())
