"""Adapter files: adapter_config.json + adapter_model.safetensors holding only what training
changed (the method's parameters, the head, and norm running statistics).

scaleshift's record: the method and its options, the backbone's identity record, the class
names, the eval transform, checksums. A LoRA adapter is also a PEFT adapter: adapter_config.json
is PEFT's LoraConfig alone (base_model_name_or_path from the identity record), PEFT's tensor
names, and the record in scaleshift_adapter.json beside it, a file PEFT does not read, so
`peft.PeftModel.from_pretrained(timm_model, directory)` loads it without a warning. The other
methods have no PEFT equivalent; their adapter_config.json holds the record in a "scaleshift"
block and claims no peft_type ("loadable_by_peft": false).

An adapter is named by a local directory or a Hugging Face Hub repo id ("org/name"), fetched by
huggingface_hub's snapshot_download (offline, HF_HUB_OFFLINE=1: from the Hub cache).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .version import __version__
from .errors import ScaleshiftError, check_model_argument
from .io import atomic_dir, file_sha256
from .methods import apply, config_of, get_method, plain_key
from .models import (HUB_REPO_ID, build_model, describe, hub_access, hub_unreachable_note,
                     identity_of, num_classes_of)
from .records import AdapterRecord, read_json, regular_file

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
RECORD_NAME = "scaleshift_adapter.json"   # the record of an adapter PEFT loads (PEFT's config clean)
FORMAT = "scaleshift-adapter"
FORMAT_VERSION = 4       # 1, 2: scaleshift's record at the top level, scaleshift's tensor names;
#                          3: a LoRA adapter's record in a block of adapter_config.json
BLOCK = "scaleshift"
HUB_ADAPTER = re.compile(f"(hf-hub:)?({HUB_REPO_ID})")


def resolve_dir(source: str | os.PathLike, what: str = "adapter") -> Path:
    """A local directory as it is, or a Hub repo id ("org/name", or "hf-hub:org/name") as the
    directory of its snapshot. A local path wins over a repo id of the same spelling."""
    path = Path(source)
    match = HUB_ADAPTER.fullmatch(str(source))
    if path.exists() or match is None:
        return path
    import huggingface_hub   # a dependency of timm, so always there
    repo_id = match.group(2)
    with hub_access() as cache_only:
        try:
            return Path(huggingface_hub.snapshot_download(repo_id))
        except Exception as exc:   # offline misses, unknown repos and network errors have many types
            where, error = hub_unreachable_note(cache_only), type(exc).__name__
        raise ScaleshiftError(f"{what} {str(source)!r} is neither a local directory nor available "
                              f"as a Hub repo: {where} ({error}). Pass an existing "
                              f"directory, or fetch the repo into the Hub cache while online "
                              f"(huggingface_hub.snapshot_download({repo_id!r}))") from None


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the running statistics of norm layers (which training updates
    even when the norm's affine is frozen)."""
    state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            for buf_name in ("running_mean", "running_var"):
                buf = getattr(module, buf_name, None)
                if buf is not None:
                    state[f"{module_name}.{buf_name}"] = buf.detach()
    return state


def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 over the frozen parameters (names without wrapper segments, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    frozen = sorted((plain_key(n), p) for n, p in model.named_parameters() if not p.requires_grad)
    for name, param in frozen:
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


def _check_replaceable(directory: Path) -> None:
    """save_adapter replaces its folder whole: only a new or empty folder, or an adapter
    scaleshift wrote (nothing but its files, and its record), may be replaced."""
    if directory.exists() and not directory.is_dir():
        raise ScaleshiftError(f"{directory} is a file; save_adapter writes a folder: pass a new "
                              f"or empty folder (nothing was written)")
    if foreign_files(directory):
        raise ScaleshiftError(f"{directory} is a non-empty folder that is not an adapter scaleshift "
                              f"wrote, and save_adapter replaces its folder whole: pass a new or "
                              f"empty folder (nothing was written)")


def foreign_files(directory: Path) -> list[str]:
    """The names in `directory` that are not an adapter scaleshift wrote: every name when the
    folder holds no scaleshift record, else the names beside the adapter's own files."""
    if not directory.is_dir():
        return []
    names = sorted(child.name for child in directory.iterdir())
    ours = {CONFIG_NAME, WEIGHTS_NAME, RECORD_NAME}
    if _has_record(directory):
        return [n for n in names if n not in ours]
    return names


def _has_record(directory: Path) -> bool:
    """Whether scaleshift's record is in the folder: its own file (beside PEFT's config) or the
    block in adapter_config.json, read, not guessed from a file name."""
    try:
        if (directory / RECORD_NAME).is_file():
            return json.loads((directory / RECORD_NAME).read_text()).get("format") == FORMAT
        return BLOCK in json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def save_adapter(model: nn.Module, directory: str | os.PathLike, *,
                 class_names: list[str] | None = None, eval_transform: dict | None = None) -> Path:
    """Write the adapter of `model` (a method applied) to `directory`. `class_names`: one name
    per class, index order (None: unknown). `eval_transform`: the evaluation transform as
    scaleshift.data.eval_transform_config records it; default: the backbone's own."""
    from .data.transforms import eval_transform_config
    check_model_argument(model, "save_adapter", needs_values=True)
    config = config_of(model)
    if config is None:
        raise ScaleshiftError("save_adapter needs a model with a method applied "
                              "(scaleshift.apply(model, method=...))")
    low = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()} - {"torch.float32"})
    if low:
        raise ScaleshiftError(f"save_adapter needs the model in float32 (its backbone fingerprint is "
                              f"taken in float32), but it holds {', '.join(low)} parameters: save "
                              f"model.float(), and train in low precision with autocast instead")
    if eval_transform is not None:
        from .records import check_eval_transform
        check_eval_transform(eval_transform, "save_adapter")
    num_classes = num_classes_of(model)
    if isinstance(class_names, str):
        raise ScaleshiftError("class_names must be a list of strings, one per class, not one string")
    if class_names is not None:
        class_names = list(class_names)
        if len(class_names) != num_classes:
            raise ScaleshiftError(f"class_names must be {num_classes} strings (one per class of "
                                  f"the head), got {len(class_names)} items")
        wrong = next((c for c in class_names if not isinstance(c, str)), None)
        if wrong is not None:
            raise ScaleshiftError(f"class_names must be strings, one per class; got "
                                  f"{type(wrong).__name__} {str(wrong)[:40]!r} (str() each name)")
    state = {k: v.contiguous() for k, v in adapter_state(model).items()}
    impl = get_method(config["method"])
    peft_fields, file_state, peft_only = impl.to_peft(model, config["options"], state) \
        if impl.peft_type else ({}, state, [])
    identity = identity_of(model)
    if peft_fields:
        peft_fields["base_model_name_or_path"] = base_model_name_or_path(identity)
    directory = Path(directory)
    _check_replaceable(directory)
    with atomic_dir(directory) as tmp:
        save_file(file_state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})   # as PEFT writes
        record = dict(
            format=FORMAT, format_version=FORMAT_VERSION, scaleshift_version=__version__,
            loadable_by_peft=bool(impl.peft_type),
            method=config["method"], options=config["options"], num_classes=num_classes,
            class_names=class_names,
            eval_transform=eval_transform or eval_transform_config(None, model),
            base_model=identity.as_dict() if identity else None,
            model_name=identity["name"] if identity else None,
            backbone_fingerprint=backbone_fingerprint(model),
            tensors={k: list(v.shape) for k, v in file_state.items()},
            peft_only_tensors=peft_only,   # frozen parts of PEFT's modules_to_save
            weights_sha256=file_sha256(tmp / WEIGHTS_NAME))
        if peft_fields:   # PEFT's config as PEFT writes it; the record where PEFT does not look
            (tmp / CONFIG_NAME).write_text(json.dumps(peft_fields, indent=2) + "\n")
            (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
        else:
            (tmp / CONFIG_NAME).write_text(json.dumps({BLOCK: record}, indent=2) + "\n")
    return directory


def base_model_name_or_path(identity: dict | None) -> str | None:
    """What PEFT's base_model_name_or_path names for a backbone: its Hub repo id (timm's
    pretrained weights, an hf-hub: model, a transformers checkpoint name) or its weights file;
    None for random or unknown weights."""
    if not identity:
        return None
    name = identity.get("name") or ""
    if identity.get("library") == "transformers":
        return name if name and name != identity.get("architecture") else None
    if identity.get("source") == "file":
        return identity.get("weights_file")
    if identity.get("source") != "hub":
        return None
    if name.startswith("hf-hub:"):
        return name.removeprefix("hf-hub:")
    import timm.models
    tag = identity.get("tag")
    cfg = timm.models.get_pretrained_cfg(f"{identity['architecture']}.{tag}" if tag else name)
    return getattr(cfg, "hf_hub_id", None) or None


def read_adapter_config(source: str | os.PathLike) -> dict:
    """scaleshift's record of an adapter (a directory or a Hub repo id), in any format version."""
    return _read_config(resolve_dir(source))


def read_adapter_record(source: str | os.PathLike) -> AdapterRecord:
    """The validated record of an adapter (a directory or a Hub repo id)."""
    return _read_record(resolve_dir(source))


def _read_record(directory: Path) -> AdapterRecord:
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.exists():
            raise ScaleshiftError(f"{path} not found: an adapter directory holds {CONFIG_NAME} "
                                  f"and {WEIGHTS_NAME} (written by scaleshift.save_adapter)")
    raw = read_json(config_path, "adapter config")
    if (directory / RECORD_NAME).exists():          # format 4: a PEFT adapter's record beside it
        config_path = directory / RECORD_NAME
        meta = read_json(config_path, "adapter record")
    elif isinstance(raw.get(BLOCK), dict):
        meta = dict(raw[BLOCK])
    elif raw.get("format") == FORMAT:     # format 1 and 2: the record at the top level
        meta = dict(raw, loadable_by_peft=False, class_names=None, eval_transform=None)
    elif "peft_type" in raw:
        raise ScaleshiftError(f"{config_path} is a PEFT {str(raw['peft_type'])[:40]} adapter that "
                              f"scaleshift did not write (no {BLOCK!r} block): load it with "
                              f"peft.PeftModel.from_pretrained(model, directory)")
    else:
        raise ScaleshiftError(f"{config_path} is not a scaleshift adapter config "
                              f"(no {BLOCK!r} block, format={str(raw.get('format'))[:40]!r})")
    return AdapterRecord.from_raw(meta, config_path)


def _read_config(directory: Path) -> dict:
    return _read_record(directory).as_meta()


def serving_transform(meta: dict, model: nn.Module, input_size: int | None = None):
    """The evaluation transform an adapter (its record, read) was evaluated with; `input_size`
    overrides its size. An adapter older than format 3 records none: VTAB's transform at the
    backbone's size (what serving used before)."""
    from .data.transforms import build_transform, transform_from_config
    from .records import check_input_size
    input_size = check_input_size(input_size)
    if meta.get("eval_transform") is None:
        return build_transform("vtab", model, False, input_size)
    size = {} if input_size is None else dict(input_size=(3, input_size, input_size))
    return transform_from_config(meta["eval_transform"], **size)


def backbone_for(meta: dict, pretrained=None) -> nn.Module:
    """The backbone an adapter (its adapter_config.json, read) was trained on, rebuilt from the
    identity record it carries: same weights, class count and timm kwargs. `pretrained`: the
    weights file, when it has moved since training."""
    if pretrained is not None and meta["base_model"].get("source") != "file":
        raise ScaleshiftError(f"the adapter's backbone is {describe(meta['base_model'])}: its "
                              f"weights are not a file, so it takes no weights file: drop --pretrained "
                              f"{pretrained} (pretrained= in the library)")
    return build_model(meta["base_model"], meta["num_classes"], pretrained=pretrained)


def load_adapter(model: nn.Module, source: str | os.PathLike) -> nn.Module:
    """Load an adapter (a directory or a Hub repo id) onto `model`: a plain model gets the
    adapter's method applied first. Refuses another backbone, class count, method or options,
    and tampered weights."""
    check_model_argument(model, "load_adapter", needs_values=True)
    meta, state = adapter_tensors(source)
    return fit_adapter(model, meta, state)


def fit_adapter(model: nn.Module, meta: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """load_adapter on an adapter already read (adapter_tensors): each file is read once."""
    trained_on, identity = meta["base_model"], identity_of(model)
    if identity and trained_on.get("architecture") and identity["architecture"] != trained_on["architecture"]:
        raise ScaleshiftError(f"adapter was trained on {trained_on['architecture']!r} but the model "
                              f"is {identity['architecture']!r}; create the model with that name")
    if identity and None not in (identity.get("kwargs"), trained_on.get("kwargs")) \
            and _architecture_kwargs(identity) != _architecture_kwargs(trained_on):
        raise ScaleshiftError(f"adapter was trained on {describe(trained_on)}, but the model was "
                              f"built with kwargs {identity['kwargs']}; build it with the same kwargs")
    if num_classes_of(model) not in (None, meta["num_classes"]):
        raise ScaleshiftError(f"adapter has a {meta['num_classes']}-class head but the model has "
                              f"{num_classes_of(model)} classes; create it with "
                              f"num_classes={meta['num_classes']}")
    config = config_of(model)
    if config is None:
        apply(model, meta["method"], **meta["options"])
    elif (config["method"], config["options"]) != (meta["method"], meta["options"]):
        raise ScaleshiftError(f"adapter is {meta['method']} {meta['options']} but the model has "
                              f"{config['method']} {config['options']} applied")
    if backbone_fingerprint(model) != meta["backbone_fingerprint"]:
        raise ScaleshiftError(f"the frozen backbone weights differ from the ones this adapter was "
                              f"trained on (fingerprint mismatch). The adapter's backbone: "
                              f"{describe(trained_on)}; this model: "
                              f"{describe(identity) if identity else 'unknown'}. Load those weights")
    expected = adapter_state(model)
    _check_tensors(state, expected)
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(state[key])
    return model


def _check_tensors(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """The adapter's tensors are exactly the expected ones: the same names and shapes, finite floats."""
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ScaleshiftError(f"adapter tensors do not fit the model: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}")
    for key, target in expected.items():
        tensor = state[key]
        if tensor.shape != target.shape or not tensor.is_floating_point():
            raise ScaleshiftError(f"adapter tensor {key} is {tensor.dtype} of shape "
                                  f"{tuple(tensor.shape)}; the model expects floats of shape "
                                  f"{tuple(target.shape)}: the adapter was edited or damaged")
        if not torch.isfinite(tensor).all():
            raise ScaleshiftError(f"adapter tensor {key} holds NaN or infinite values: the adapter "
                                  f"was edited or damaged, or its training diverged")


def check_adapter_fits(meta: dict, state: dict[str, torch.Tensor]) -> None:
    """What fit_adapter checks of the tensors, for the pure merge, which applies no method to a
    real model: the method and options apply to the adapter's architecture (built on the meta
    device, no weights), and the tensors are exactly that method's, in shape, as finite floats."""
    from .models import plain_model
    with torch.device("meta"):
        shell = plain_model(meta["base_model"], meta["num_classes"])
        apply(shell, meta["method"], **meta["options"])
    _check_tensors(state, adapter_state(shell))


def _architecture_kwargs(identity: dict) -> dict:
    """Constructor kwargs that shape the architecture (drop rates only matter in training)."""
    return {k: v for k, v in identity["kwargs"].items() if not k.startswith("drop")}


def adapter_tensors(source: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(scaleshift's record, the adapter's tensors under the names of a model with its method
    applied) after verifying the weights' sha256: what the pure merge takes, no model in sight."""
    directory = resolve_dir(source)
    meta = _read_config(directory)
    weights_path = regular_file(directory / WEIGHTS_NAME, "adapter weights")
    if file_sha256(weights_path) != meta["weights_sha256"]:
        raise ScaleshiftError(f"{weights_path} does not match the checksum in {CONFIG_NAME}: "
                              f"the file was changed or damaged; re-save the adapter")
    try:
        state = load_file(str(weights_path))
    except Exception as exc:   # safetensors' own error type: a header or data it cannot read
        raise ScaleshiftError(f"{weights_path} is not a readable safetensors file "
                              f"({str(exc)[:100]}); re-save the adapter") from None
    if not meta["loadable_by_peft"]:
        return meta, state
    peft_only = set(meta.get("peft_only_tensors", []))
    ours = {k: v for k, v in state.items() if k not in peft_only}
    method = get_method(meta["method"])
    if not hasattr(method, "from_peft_keys"):
        raise ScaleshiftError(f"{directory}: loadable_by_peft is true, but {meta['method']} adapters "
                              f"are never PEFT files: the record was edited; re-save the adapter")
    return meta, method.from_peft_keys(ours)
