"""Where a bf16 training step of fpt's loop spends its GPU time (GPT-2 small's shape, random weights,
sequence 1024, batch 32): torch.profiler's kernel table, then the step time of a few variants.

    python tools/gpu_profile.py [--out DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch


def main() -> int:
    from fpt.bench.loops import build_fpt_loop
    from fpt.bench.measure import median_seconds as _time, sync as _sync
    from fpt.core.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--variants", default="base,gelu_new,dropout0,eager,compile,compile_ro")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-profile", action="store_true", help="only the step times")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    base = TrainConfig(task="synthetic", task_options={"seq_len": args.seq_len, "token_dim": 16},
                       backbone="gpt2", init="random", batch_size=args.batch_size, precision="bf16",
                       device=args.device)
    variants = {"base": {}, "gelu_new": {}, "dropout0": {"dropout": 0.0}, "eager": {"attn_implementation": "eager"},
                "compile": {"compile": True}, "compile_ro": {"compile": True, "compile_mode": "reduce-overhead"}}
    for name in args.variants.split(","):
        cfg = dataclasses.replace(base, **variants[name])
        exp, _, step = build_fpt_loop(cfg)
        if name == "gelu_new":  # transformers' own GELU back in place of fpt's fused one (fastops.use_fused_gelu)
            from transformers.activations import NewGELUActivation

            from fpt.fastops import TanhGELU, swap_modules

            swap_modules(exp.model, lambda m: isinstance(m, TanhGELU), lambda m: NewGELUActivation())
        # compiled variants compile here (compile_ro, reduce-overhead: CUDA graphs, the host out of the loop,
        # which is what short sequences are bound by), and record their CUDA graphs
        for _ in range(5):
            step()
        ms = 1000 * _time(step, 10, exp.device)
        print(f"{name:<9} {ms:8.1f} ms/step", flush=True)
        if name == "base" and not args.no_profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    step()
                _sync(exp.device)
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=90)
            print(table, flush=True)
            with open(f"{args.out}/profile_base.txt", "w") as f:
                f.write(table)
                f.write(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=90))
        del exp, step
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
