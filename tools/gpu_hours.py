"""A FLOP-count estimate of the GPU-hours of the paper-budget matrices (README, "Cluster scale").

An estimate, not a measurement: `fpt reproduce MATRIX --budget paper --dry-run` on the GPU that will
run the sweep times real steps there. This needs no GPU, no data and no weights:

    python tools/gpu_hours.py [--backbone gpt2] [--matrices table1,params,...]

Per training step of a transformer row, with N = 12 L d^2 body weights (GPT-2 shapes: 4d^2 attention,
8d^2 feed-forward per block), T tokens (the task spec's length, an upper bound for the padded tasks
ListOps and homology, whose batches are trimmed to their longest row) and batch B:
  forward  F = B T (2 N + 4 L T d)             weights, plus attention scores and values
  FPT rows (attention and feed-forward frozen): 2 F   (backward: activation gradients only)
  rows that train the body (train all / feedforward / attention): 3 F
Time per step = max(FLOPs / sustained throughput, a floor for kernel launches), +10% for evaluation,
as in fpt's --dry-run. The LSTM row is bound by its T sequential steps, not by FLOPs: it is counted
but not priced. Rows that load other backbones (ViT, Bit-pretrained) are priced with GPT-2's shape.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpt.backbones import GPT2_SIZES  # noqa: E402
from fpt.paper.reproduce import load_matrix, plan  # noqa: E402
from fpt.tasks import build_task  # noqa: E402

# One NVIDIA H100 SXM. fp32 is fpt's default precision (PyTorch keeps TF32 off for matmuls by default).
PEAK = {"fp32": 67e12, "bf16": 989e12}  # dense FLOP/s
SUSTAINED = {"fp32": 0.5, "bf16": 0.35}  # assumed fraction of peak for GPT-2-sized steps
FLOOR_S_PER_12_LAYERS = 0.010  # assumed: a small step is launch-bound at about 10 ms per 12 blocks
EVAL_OVERHEAD = 1.1


def step_seconds(cfg, seq_len: int, precision: str) -> float | None:
    """Estimated seconds per training step of one run on one H100 (None: not priced, the LSTM)."""
    if cfg.model != "fpt":
        return None
    shape = GPT2_SIZES.get(cfg.backbone, GPT2_SIZES["gpt2"])
    layers, d = shape["n_layer"], shape["n_embd"]
    if cfg.layers:
        layers = min(layers, cfg.layers)
    weights = 12 * layers * d * d
    forward = cfg.batch_size * seq_len * (2 * weights + 4 * layers * seq_len * d)
    body_trains = bool({"attention", "feedforward"} & set(cfg.train))
    flops = (3 if body_trains else 2) * forward
    floor = FLOOR_S_PER_12_LAYERS * layers / 12
    return max(flops / (PEAK[precision] * SUSTAINED[precision]), floor)


def estimate(matrix: str, backbone: str) -> dict:
    runs = [r for r in plan(load_matrix(matrix), budget="paper", seeds=1, out=Path("/tmp/unused"),
                            backbone=backbone) if r.config is not None]
    hours = {"fp32": 0.0, "bf16": 0.0}
    lstm_steps, lstm_runs = 0, 0
    for run in runs:
        cfg = run.config
        seq_len = build_task(cfg.task, patch_size=cfg.patch_size, **cfg.task_options).spec.seq_len
        for precision in hours:
            s = step_seconds(cfg, seq_len, precision)
            if s is None:
                lstm_runs += precision == "fp32"
                lstm_steps += cfg.steps if precision == "fp32" else 0
                continue
            hours[precision] += s * cfg.steps * EVAL_OVERHEAD / 3600
    return {"matrix": matrix, "runs": len(runs), "steps": sum(r.config.steps for r in runs),
            "fp32_h": hours["fp32"], "bf16_h": hours["bf16"], "lstm_runs": lstm_runs, "lstm_steps": lstm_steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="gpt2")
    p.add_argument("--matrices", default="table1,pretraining,params,frozen-vs-unfrozen,model-size,layernorm,compute")
    args = p.parse_args()
    print("| matrix | runs (1 seed, 1 lr) | gradient steps | H100 hours, fp32 | H100 hours, bf16 | LSTM runs (not priced) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.matrices.split(","):
        e = estimate(name, args.backbone)
        print(f"| {e['matrix']} | {e['runs']} | {e['steps']:,} | {e['fp32_h']:,.0f} | {e['bf16_h']:,.0f} | "
              f"{e['lstm_runs']} ({e['lstm_steps']:,} steps) |")


if __name__ == "__main__":
    main()
