"""The names of what trains: parameter groups and LoRA targets (each model row's default groups: fpt/core/rows.py).

At the bottom of the import graph (no torch), so fpt/core/config.py checks `train`, `lora_targets` and
`model` without importing the modules that classify parameters (fpt/models/model.py,
fpt/backbones/architectures.py), add adapters (fpt/models/lora.py) or build the rows (fpt/models/bodies.py).
"""
from __future__ import annotations

from fpt.core.errors import FPTError

#: Every parameter belongs to exactly one of these groups. `recurrent` is the LSTM baseline's
#: body (fpt/models/bodies.py); `lora` holds LoRA adapters (fpt/models/lora.py). `unused` stays last.
GROUPS = ("input", "output", "positions", "layernorm", "attention", "feedforward", "recurrent", "lora",
          "unused")
#: Groups a user may name in `--train` (`unused` is never trained: FPT does not read it).
TRAINABLE_GROUPS = GROUPS[:-1]
#: The paper's FPT: input and output layers, positions and layer norms learn.
FPT_GROUPS = ("input", "output", "positions", "layernorm")
#: Groups whose linear layers may carry LoRA adapters.
LORA_TARGETS = ("attention", "feedforward")



def parse_groups(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'input,output' | 'fpt' | 'all' | 'none' -> a validated tuple of trainable groups."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if name in ("", "none"):
            continue
        if name == "fpt":
            out += FPT_GROUPS
        elif name == "all":
            out += TRAINABLE_GROUPS
        elif name in TRAINABLE_GROUPS:
            out.append(name)
        else:
            raise FPTError(f"unknown parameter group {name!r}; choose from: "
                           f"{', '.join(TRAINABLE_GROUPS)} (or fpt, all)")
    return tuple(g for g in TRAINABLE_GROUPS if g in out)  # canonical order, no repeats
