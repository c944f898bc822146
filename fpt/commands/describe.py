"""`fpt describe`: each parameter group's total and trainable counts for a backbone and task."""
from __future__ import annotations

import argparse

from fpt.commands.train import add_config_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("describe", help="print parameter groups and what trains", description=__doc__)
    p.add_argument("--config", "-c", help="YAML file of config keys; flags override it")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fpt.core.rows import MODELS
    from fpt.models.factory import build_model
    from fpt.models.model import count_parameters, format_counts
    from fpt.tasks import task_from_config

    cfg = config_from_args(args)
    task = task_from_config(cfg)
    model, backbone = build_model(cfg, task.spec)
    spec = task.spec
    if backbone is not None:
        lora = f", LoRA r={cfg.lora_r} on {'+'.join(cfg.lora_targets)}" if cfg.lora_r else ""
        print(f"backbone {cfg.backbone} ({backbone.arch.model_type}, {backbone.num_layers} layers x "
              f"{backbone.width}, init {cfg.init}{lora}) from {backbone.source}")
    else:
        print(f"model {cfg.model}: {MODELS.get(cfg.model).description}")
    shape = (f"{spec.seq_len} tokens of width {spec.token_dim}" if spec.input_kind == "continuous"
             else f"up to {spec.seq_len} tokens from a vocabulary of {spec.vocab_size}")
    print(f"task {spec.name}: {shape}; output read from the last {spec.output_tokens} token(s), "
          f"{spec.num_targets} target(s) x {spec.num_classes} classes")
    print(f"training: {', '.join(cfg.train)}")
    if backbone is not None:
        if getattr(model.body, "reads_rows", False):
            last_block = f"at the {spec.output_tokens} read-out token(s) only (fpt/backbones/readout.py)"
        elif cfg.last_block_at_readout:
            last_block = f"in full ({backbone.arch.model_type} has no read-out path)"
        else:
            last_block = "in full"
        print(f"last block: {last_block}")
    note = "positions: only the rows the task's sequence length uses count as trainable"
    if backbone is not None and backbone.arch.add_positions:
        note += (f"\nNOTE: {backbone.arch.model_type} {backbone.arch.add_positions_why}; FPT adds "
                 f"a new learned positional embedding ({spec.seq_len} x {backbone.width}) to its inputs")
    print(format_counts(count_parameters(model), note=note))
    return 0
