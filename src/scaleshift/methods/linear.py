"""Linear probing: train the classifier head only. As in the official code, every parameter of
the model's `head` module trains (the official linear probe trains each parameter whose name
holds 'head.'), which for ConvNeXt includes head.norm (transformers' ConvNeXt: its pooled
convnext.layernorm); whole_head=false keeps the classifier alone."""
import torch.nn as nn

from ..models import is_transformers_model
from ..profiles import family_of
from .base import Method, Option


class Linear(Method):
    name = "linear"
    description = "Train the classifier head only (linear probing)"
    supports_transformers = True
    options = {
        "whole_head": Option(True, "train every parameter of the model's `head` module (ConvNeXt: "
                             "head.norm too, as the official linear probe); false: the classifier only"),
    }

    def inject(self, model: nn.Module, opts: dict) -> list[str]:
        if is_transformers_model(model):   # its head is `classifier`; ConvNeXt's norm is outside it
            norm = family_of(model).head_norm
            if opts["whole_head"] and norm:
                return [f"{norm}.{n}" for n, _ in model.get_submodule(norm).named_parameters()]
            return []
        head = getattr(model, "head", None)
        if opts["whole_head"] and isinstance(head, nn.Module):
            return [f"head.{n}" for n, _ in head.named_parameters()]
        return []


LINEAR = Linear()
