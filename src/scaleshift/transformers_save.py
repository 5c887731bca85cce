"""`save_pretrained` of a method-applied transformers model writes the merged plain model.

The Hugging Face `Trainer` saves a `PreTrainedModel` with `model.save_pretrained(dir)` (its
`save_model` and every checkpoint). Left alone, that writes the wrapped keys
(`...query.base_layer.weight`, `...query.scale`), which `from_pretrained` does not know: it
loads a randomly initialised model and only reports the unexpected keys. `apply` therefore
gives each transformers model it changes its own `save_pretrained`: merge, then let
transformers save the plain model, so `from_pretrained(dir)` gives the trained model's logits.

Loading such a merged file back into the training model (Trainer's `resume_from_checkpoint`,
`load_best_model_at_end`) cannot restore the method's tensors, which are folded into the
weights; it is refused with an error instead of leaving the model half loaded.
"""
from __future__ import annotations

import types

import torch.nn as nn

from .adapter_files import adapter_state
from .errors import ScaleshiftError
from .merge import merge_state, merge_with_report
from .methods import config_of, plain_key


def save_merged_on_save_pretrained(model: nn.Module) -> None:
    """Give `model` (a transformers model with a method applied) the merged `save_pretrained`
    and the load guard."""
    model.save_pretrained = types.MethodType(_save_merged, model)
    model.register_load_state_dict_pre_hook(_refuse_merged_state)


def _save_merged(model: nn.Module, save_directory, *args, state_dict: dict | None = None, **kwargs):
    """What transformers' `save_pretrained` takes, for the merged plain model. A `state_dict`
    given by the caller (Trainer under FSDP or DeepSpeed: the gathered, wrapped state) is
    merged in place of the model's own tensors."""

    plain, _ = merge_with_report(model)   # transformers' classifiers fold completely
    if state_dict is not None:
        plain_keys = set(plain.state_dict())
        base = {plain_key(k): v for k, v in state_dict.items() if plain_key(k) in plain_keys}
        trained = {k: state_dict[k] for k in adapter_state(model) if k in state_dict}
        config = config_of(model)
        state_dict, _ = merge_state(config["method"], base, trained, config["options"])
    return plain.save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)


def _refuse_merged_state(module, state_dict, prefix, local_metadata, strict, missing_keys,
                         unexpected_keys, error_msgs) -> None:
    if prefix:
        return
    wrapped = {plain_key(k) for k in module.state_dict(keep_vars=True) if plain_key(k) != k}
    folded = sorted(wrapped & set(state_dict))
    if folded:
        raise ScaleshiftError(
            f"this state dict holds a merged plain model ({len(folded)} weights such as "
            f"{folded[0]!r} have the method folded in), which is what save_pretrained writes "
            f"for a scaleshift-applied {type(module).__name__}; it cannot be loaded back into the "
            f"model being trained (the method's tensors cannot be separated from the weights). "
            f"Load it with {type(module).__name__}.from_pretrained(dir) to use it, or to train "
            f"further apply the method to that loaded model; Trainer's resume_from_checkpoint "
            f"and load_best_model_at_end cannot restore such a checkpoint")
