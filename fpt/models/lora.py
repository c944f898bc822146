"""LoRA adapters on the frozen body, through the `peft` library (a row the paper did not have).

`add_lora` wraps the linear layers of the chosen groups (attention, optionally
feed-forward) of a Hugging Face body in peft LoRA layers; the wrapped base
weights keep their group and stay frozen, and the adapters form the `lora`
group. Which layers are wrapped comes from the architecture table (module
visits), never from substrings of parameter names.
"""
from __future__ import annotations

from torch import nn

from fpt.core.errors import FPTError
from fpt.core.groups import LORA_TARGETS  # noqa: F401  (groups whose linear layers may carry adapters)


def add_lora(model: nn.Module, arch, *, r: int, targets: tuple[str, ...], alpha: float | None = None) -> None:
    """Inject rank-`r` LoRA adapters (peft) into every linear layer of `model` in groups `targets`."""
    from peft import LoraConfig, inject_adapter_in_model

    from fpt.backbones.architectures import classify_body, linear_layer_types

    groups = classify_body(model, arch)
    linear = linear_layer_types(arch)
    names = [name for name, m in model.named_modules()
             if isinstance(m, linear) and all(groups[f"{name}.{p}"] in targets for p, _ in m.named_parameters())]
    if not names:
        raise FPTError(f"no linear layers in groups {', '.join(targets)} of this {arch.model_type} body for LoRA")
    # NOTE: full module paths, so peft's suffix matching cannot pick up a layer we did not choose.
    config = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=0.0,
                        target_modules=names, fan_in_fan_out=arch.fan_in_fan_out)
    inject_adapter_in_model(config, model)


def lora_parameter_names(model: nn.Module) -> set[str]:
    """Names of the LoRA adapter parameters of `model` (empty when none were added)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return set()
    names: set[str] = set()
    for path, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for attr in LoraLayer.adapter_layer_names:
                part = getattr(module, attr, None)
                if part is not None:
                    names.update(f"{path}.{attr}.{n}" for n, _ in part.named_parameters())
    return names
