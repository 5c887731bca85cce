"""The one exception type scaleshift raises for bad input; the CLI turns it into exit code 2."""


class ScaleshiftError(ValueError):
    """A user-facing error: the message names the problem and the fix."""


class Interrupted(Exception):
    """Ctrl-C during a long command: the message says what was kept and how to continue; the
    CLI prints it and exits 130 (the shell's code for SIGINT)."""


def check_model_argument(model, where: str, needs_values: bool = False) -> None:
    """The `model` a public function was given is a torch module (and, when `needs_values`, one
    whose weights hold values, not meta tensors)."""
    import torch.nn as nn
    if not isinstance(model, nn.Module):
        raise ScaleshiftError(f"{where} takes a torch.nn.Module (e.g. scaleshift.create_model(...)), "
                              f"got {type(model).__name__}")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) \
            and where in ("merge", "save_adapter", "load_adapter"):
        raise ScaleshiftError(f"{where}: the model is wrapped in {type(model).__name__}, which holds "
                              f"the method inside it: pass model.module")
    if needs_values and any(p.is_meta for p in model.parameters()):
        raise ScaleshiftError(f"{where}: the model's weights are on the meta device (shapes, no "
                              f"values); create it on a real device, or load its weights first")
