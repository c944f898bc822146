"""Where one training step of fpt's loop spends its CPU time: torch.profiler's per-op self time, grouped into
matmuls and everything else, as a Markdown table (docs/performance.md, "Where the step goes").

    python tools/cpu_profile.py --task mnist                     # MiniLM, MNIST's shape (64 tokens, batch 32)
    python tools/cpu_profile.py --task synthetic --task-options '{seq_len: 1024, token_dim: 16, num_classes: 10,
        eval_examples: 64}' --batch-size 8 --dropout 0.1         # 1024 tokens with attention dropout

It prints the host kind first (AMX, AVX512-BF16 without AMX, no native bf16): figures of one host kind are
never compared with another's. Run it with nothing else on the cores.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

MATMUL = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|_scaled_dot_product\w*|mkldnn\w*|_addmm\w*)$")
# fpt's C attention kernels (their backward is an autograd node; their forward runs inside a Python function,
# which the profiler does not see as an op: it is in the step's unattributed time)
KERNEL = re.compile(r"^(Long|Short|ProjectedShort)Attention\w*$")


def host_kind() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    if "amx_bf16" in flags:
        return "AMX-BF16"
    return "AVX512-BF16 (no AMX)" if "avx512_bf16" in flags else "no native bf16"


def main() -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fpt.bench.loops import build_fpt_loop
    from fpt.core.config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mnist")
    p.add_argument("--task-options", default="{}", help="YAML mapping")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--precision", default="auto")
    p.add_argument("--steps", type=int, default=5, help="profiled steps (after 3 untimed)")
    p.add_argument("--rows", type=int, default=15, help="ops listed")
    p.add_argument("--no-c-attention", action="store_true", help="the eager attention math instead of fpt's C "
                   "attention kernels (short and long attention): the step before them")
    args = p.parse_args()
    cfg = TrainConfig(task=args.task, task_options=yaml.safe_load(args.task_options) or {}, backbone=args.backbone,
                      batch_size=args.batch_size, dropout=args.dropout, precision=args.precision, device="cpu")
    exp, _, fast_step = build_fpt_loop(cfg)
    exp.model.train()  # dropout on, as in training (a loaded body starts in eval mode)

    def step():
        if not args.no_c_attention:
            return fast_step()
        from fpt.fastops import eager_math_for_short_attention

        with eager_math_for_short_attention():
            return fast_step()

    for _ in range(3):
        step()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    wall = (time.perf_counter() - started) / args.steps
    totals: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        if e.key.startswith("aten::") or e.key.startswith("fpt::") or "Backward" in e.key or "backward" in e.key:
            totals[e.key] += e.self_cpu_time_total / args.steps / 1e3  # ms a step
    total = max(sum(totals.values()), 1000 * wall)  # the profiler's ops, or the step where it sees less
    mm = sum(v for k, v in totals.items() if MATMUL.match(k))
    kernels = sum(v for k, v in totals.items() if KERNEL.match(k))
    unattributed = total - sum(totals.values())
    spec = exp.data.spec
    print(f"host: {host_kind()}; {torch.get_num_threads()} threads; {args.backbone} {args.task} "
          f"({spec.seq_len} tokens, batch {args.batch_size}, dropout {args.dropout}, {exp.cfg.precision}"
          f"{', eager attention math' if args.no_c_attention else ''}); "
          f"step {1000 * wall:.1f} ms with the profiler on")
    print()
    print("| op | ms a step | share |")
    print("|---|---|---|")
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:args.rows]:
        kind = " (matmul)" if MATMUL.match(k) else " (C attention kernel)" if KERNEL.match(k) else ""
        print(f"| {k}{kind} | {v:.1f} | {100 * v / total:.0f}% |")
    print(f"| **matmuls** | {mm:.1f} | {100 * mm / total:.0f}% |")
    if kernels or unattributed > 0.5:
        print(f"| **C attention kernels (backward), and time no op holds (their forward, Python)** | "
              f"{kernels + unattributed:.1f} | {100 * (kernels + unattributed) / total:.0f}% |")
    rest = total - mm - kernels - unattributed
    print(f"| **everything else** | {rest:.1f} | {100 * rest / total:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
