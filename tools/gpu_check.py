"""Correctness of fpt's training loop on a GPU, against the same run on the CPU.

Run on a machine with CUDA (tools/gpu_bench.sh calls it before timing anything):

    python tools/gpu_check.py [--out results.json]

1. fp32, dropout 0: the same seeded Bit XOR run (GPT-2 small's shape, random weights, first 2 blocks)
   on the CPU and on the GPU gives the same losses to float tolerance: the batches, initial weights and
   update order do not depend on the device.
2. bf16 on the GPU: the same run's test loss within a bf16 margin of the fp32 one, and a bf16 experiment's
   frozen block matrices stored in bf16, every trainable weight in fp32, all on the device.
3. A full-depth GPT-2-shape run in bf16 on the GPU, with dropout, learns Bit XOR (test accuracy reported).
Runs every check, prints their figures, and exits non-zero if any failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch


def _run(device: str, precision: str, run_dir: str, **overrides) -> dict:
    from fpt.core.config import TrainConfig
    from fpt.run.launch import train

    settings = dict(task="bit-xor", backbone="gpt2", init="random", layers=2, steps=40, eval_every=40,
                    batch_size=32, lr=1e-3, dropout=0.0, seed=0, device=device, precision=precision,
                    run_dir=run_dir)
    settings.update(overrides)
    started = time.perf_counter()
    result = train(TrainConfig(**settings), progress=False)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _dtypes_after_bf16_build(device: str) -> dict:
    """Which dtypes a bf16 GPU experiment keeps its frozen and trainable weights in."""
    from fpt.core.config import TrainConfig
    from fpt.run.experiment import build_experiment

    exp = build_experiment(TrainConfig(task="bit-xor", backbone="gpt2", init="random", layers=2,
                                       device=device, precision="bf16"))
    # the frozen matrices of the residual blocks (GPT-2's unused token embedding `wte` stays as loaded)
    frozen = {str(p.dtype) for n, p in exp.model.named_parameters()
              if not p.requires_grad and p.dim() == 2 and ".h." in n}
    trainable = {str(p.dtype) for p in exp.model.parameters() if p.requires_grad}
    devices = {str(p.device.type) for p in exp.model.parameters()}
    return {"frozen_matrices": sorted(frozen), "trainable": sorted(trainable), "devices": sorted(devices)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the checks' figures to this JSON file")
    parser.add_argument("--device", default="cuda", help="the accelerator (cpu: a smoke test of this script)")
    args = parser.parse_args()
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch", file=sys.stderr)
        return 2
    checks, failed = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        cpu = _run("cpu", "fp32", f"{tmp}/cpu")
        gpu = _run(dev, "fp32", f"{tmp}/gpu")
        gap = abs(cpu["test_loss"] - gpu["test_loss"]) / abs(cpu["test_loss"])
        checks["fp32_cpu_vs_cuda"] = {"cpu_test_loss": cpu["test_loss"], "cuda_test_loss": gpu["test_loss"],
                                      "relative_gap": gap, "cpu_device": cpu["device"], "cuda_device": gpu["device"]}
        if gap > 1e-3:
            failed.append(f"fp32 test loss on the GPU differs from the CPU's by {gap:.2e} (> 1e-3)")

        bf16 = _run(dev, "bf16", f"{tmp}/bf16")
        bgap = abs(bf16["test_loss"] - gpu["test_loss"]) / abs(gpu["test_loss"])
        checks["bf16_vs_fp32_cuda"] = {"fp32_test_loss": gpu["test_loss"], "bf16_test_loss": bf16["test_loss"],
                                       "relative_gap": bgap}
        if bgap > 5e-2:
            failed.append(f"bf16 test loss on the GPU differs from fp32's by {bgap:.2e} (> 5e-2)")

        dtypes = _dtypes_after_bf16_build(dev)
        checks["bf16_storage"] = dtypes
        if dtypes != {"frozen_matrices": ["torch.bfloat16"], "trainable": ["torch.float32"],
                      "devices": [torch.device(dev).type]}:
            failed.append(f"bf16 run's weights are not as declared: {dtypes}")

        full = _run(dev, "bf16", f"{tmp}/full", layers=None, dropout=0.1, steps=600, eval_every=200)
        checks["gpt2_full_bf16_bit_xor"] = {k: full[k] for k in ("test_accuracy", "test_loss", "steps", "seconds",
                                                                  "trainable_params", "total_params")}

    for name, figures in checks.items():
        print(f"{name}: {json.dumps(figures)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"checks": checks, "failed": failed, "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}, f, indent=2)
    for message in failed:
        print(f"gpu_check FAILED: {message}", file=sys.stderr)
    if not failed:
        print("gpu_check: all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
