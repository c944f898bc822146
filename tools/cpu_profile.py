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

MATMUL = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|_scaled_dot_product\w*|mkldnn\w*|_addmm\w*)$"
                    r"|^fpt::\w*attention\w*$")


def host_kind() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    if "amx_bf16" in flags:
        return "AMX-BF16"
    return "AVX512-BF16 (no AMX)" if "avx512_bf16" in flags else "no native bf16"


def main() -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fpt.bench import build_fpt_loop
    from fpt.config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mnist")
    p.add_argument("--task-options", default="{}", help="YAML mapping")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--precision", default="auto")
    p.add_argument("--steps", type=int, default=5, help="profiled steps (after 3 untimed)")
    p.add_argument("--rows", type=int, default=15, help="ops listed")
    args = p.parse_args()
    cfg = TrainConfig(task=args.task, task_options=yaml.safe_load(args.task_options) or {}, backbone=args.backbone,
                      batch_size=args.batch_size, dropout=args.dropout, precision=args.precision, device="cpu")
    exp, _, step = build_fpt_loop(cfg)
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
    total = sum(totals.values())
    mm = sum(v for k, v in totals.items() if MATMUL.match(k))
    spec = exp.data.spec
    print(f"host: {host_kind()}; {torch.get_num_threads()} threads; {args.backbone} {args.task} "
          f"({spec.seq_len} tokens, batch {args.batch_size}, dropout {args.dropout}, {exp.cfg.precision}); "
          f"step {1000 * wall:.1f} ms with the profiler on")
    print()
    print("| op | ms a step | share |")
    print("|---|---|---|")
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:args.rows]:
        print(f"| {k}{' (matmul)' if MATMUL.match(k) else ''} | {v:.1f} | {100 * v / total:.0f}% |")
    print(f"| **matmuls** | {mm:.1f} | {100 * mm / total:.0f}% |")
    print(f"| **everything else** | {total - mm:.1f} | {100 * (total - mm) / total:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
