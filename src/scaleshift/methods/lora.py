"""LoRA (Hu et al. 2022) through PEFT's own layers (`peft.inject_adapter_in_model`), which work
on timm models as they are and merge by adding B @ A * alpha / rank to the base weight.

Its adapters are saved in PEFT's own format (a LoraConfig in adapter_config.json, PEFT's tensor
names), so `peft.PeftModel.from_pretrained(timm_model, adapter_dir)` loads them."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ScaleshiftError
from ..extras import require
from ..models import classifier_parameter_names, is_transformers_model
from .base import Method, Option, plain_key


PEFT_PREFIX = "base_model.model."   # what PeftModel puts before the wrapped model's names
ADAPTER_NAME = "default"            # PEFT's adapter name, which its files leave out


class LoRA(Method):
    name = "lora"
    peft_type = "LORA"
    description = "Low-rank updates of the attention qkv and MLP layers (Hu et al. 2022, via PEFT)"
    supports_transformers = True
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
        unmatched = sorted(set(opts["targets"]) - {name.rpartition(".")[2] for name in targets})
        if unmatched and is_transformers_model(model):   # the defaults are timm's names
            names = sorted({n.rpartition(".")[2] for n, m in model.named_modules()
                            if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in head})
            raise ScaleshiftError(f"lora: no Linear/Conv2d named {unmatched} in the transformers "
                                  f"{type(model).__name__}, whose layers are named {names}; "
                                  f"set targets= to some of those")
        config = peft.LoraConfig(r=opts["rank"], lora_alpha=opts["alpha"], lora_dropout=opts["dropout"],
                                 target_modules=targets)
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
        return [n for n, _ in model.named_parameters() if ".lora_" in n]

    def to_peft(self, model: nn.Module, options: dict[str, Any], state: dict[str, torch.Tensor]
                ) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
        """The adapter in PEFT's format: (the adapter_config.json fields PEFT reads, the tensors
        under PEFT's names, the names of those tensors only PEFT needs). The injected modules are
        target_modules; the modules of every other tensor the adapter carries (the head, norm
        running statistics) are modules_to_save, whose whole state PEFT loads, frozen parts too.
        PEFT wraps every module whose name ends with a modules_to_save entry, so the set is
        closed under that rule."""
        peft = require("peft", "saving a LoRA adapter")
        targets = sorted({key.partition(".lora_")[0] for key in state if ".lora_" in key})
        changed = {key.rpartition(".")[0] for key in state if ".lora_" not in key}
        names = [name for name, _ in model.named_modules() if name]
        to_save = sorted({name for name in names if any(name.endswith(c) for c in changed)})
        config = peft.LoraConfig(r=options["rank"], lora_alpha=options["alpha"],
                                 lora_dropout=options["dropout"], target_modules=targets,
                                 modules_to_save=to_save or None, inference_mode=True)
        fields = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
        fields["auto_mapping"] = dict(base_model_class=type(model).__name__,
                                      parent_library=type(model).__module__)
        tensors = dict(state)
        for name in to_save:
            for key, value in model.get_submodule(name).state_dict(prefix=f"{name}.").items():
                tensors.setdefault(plain_key(key), value.detach().contiguous())
        inner = {f".{part}.{ADAPTER_NAME}.": f".{part}." for part in ("lora_A", "lora_B")}
        renamed = {}
        for key, value in tensors.items():
            for ours, theirs in inner.items():
                key = key.replace(ours, theirs)
            renamed[PEFT_PREFIX + key] = value
        peft_only = sorted(PEFT_PREFIX + key for key in tensors if key not in state)
        return fields, renamed, peft_only

    def from_peft_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """PEFT's file names -> the names of a model with this method applied."""
        out = {}
        for key, value in state.items():
            if not key.startswith(PEFT_PREFIX):
                raise ScaleshiftError(f"tensor {key!r} is not named as PEFT names LoRA tensors "
                                      f"({PEFT_PREFIX}...): the adapter file was changed")
            key = key[len(PEFT_PREFIX):]
            for part in ("lora_A", "lora_B"):
                key = key.replace(f".{part}.", f".{part}.{ADAPTER_NAME}.")
            out[key] = value
        return out

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


LORA = LoRA()
