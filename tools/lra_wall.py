"""The wall time of one CIFAR-10 LRA `cpu` run, before and after long attention (issue 40 item 4), on one host.

Both runs are Table 1's FPT cell on CIFAR-10 LRA at the `cpu` budget (seed 0), trained back to back in fresh
processes on the same machine:
- eager: the attention as before issue 40 (`fastops.eager_math_for_short_attention()`: the eager math where a C
  attention kernel would run; at 1024 tokens with dropout that was the only path before long attention);
- long-attention: today's default.
Each lands in OUT/runs/<variant>/cifar10-lra/lr0.001-seed0 as an ordinary run (result.json's wall_time_s);
OUT/summary.md tabulates the two and compares their wall times. Figures from different hosts are never
compared: run both here.

    python tools/lra_wall.py                       # results/lra-wall-cpu: about 1-2 h on a 2-core Zen 4
    python tools/lra_wall.py --steps 4 --out /tmp/lra  # a quick check that both variants train
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

VARIANTS = ("eager", "long-attention")


def planned_run(out: Path, steps: int | None):
    from fpt.paper.reproduce import load_matrix, plan

    (run,) = [r for r in plan(load_matrix("table1"), budget="cpu", seeds=1, out=out, rows=["FPT"],
                              tasks=["cifar10-lra"]) if r.config is not None]
    cfg = run.config
    if steps:  # a quick check: a few steps, and 16 images to validate and test on
        cfg = replace(cfg, steps=steps, eval_every=steps, task_options={**cfg.task_options, "val_size": 16,
                                                                          "test_size": 16})
    return run, cfg


def train_variant(variant: str, out: Path, steps: int | None) -> None:
    import contextlib

    from fpt.fastops import eager_math_for_short_attention
    from fpt.run.launch import train

    run, cfg = planned_run(out, steps)
    run_dir = out / "runs" / variant / "cifar10-lra" / run.run_dir.name
    cfg = replace(cfg, run_dir=str(run_dir))
    if (run_dir / "result.json").exists():
        print(f"{variant}: done already ({run_dir})", file=sys.stderr)
        return
    switch = eager_math_for_short_attention() if variant == "eager" else contextlib.nullcontext()
    with switch:
        train(cfg, resume=(run_dir / "checkpoint.pt").exists(), overwrite=not (run_dir / "checkpoint.pt").exists(),
              progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/lra-wall-cpu")
    p.add_argument("--steps", type=int, default=None, help="train only this many steps (a quick check)")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in this process
    args = p.parse_args()
    out = Path(args.out)
    if args.variant:
        train_variant(args.variant, out, args.steps)
        return
    for variant in VARIANTS:  # each in a fresh process: one's heap and caches never time the other
        cmd = [sys.executable, __file__, "--variant", variant, "--out", str(out)]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        print(f"{variant}: training ({' '.join(cmd[1:])})", file=sys.stderr)
        subprocess.run(cmd, check=True)
    lines = ["| attention | steps | test accuracy | validation | wall time | host | bf16 matmul |",
             "|---|---:|---:|---:|---:|---|---:|"]
    walls = {}
    for variant in VARIANTS:
        (result,) = (out / "runs" / variant / "cifar10-lra").glob("*/result.json")
        res = json.loads(result.read_text())
        walls[variant] = res["wall_time_s"]
        host = res.get("host") or {}
        rate = (res.get("precision_auto") or {}).get("bf16_gflops")
        lines.append(f"| {variant} | {res['steps']} | {100 * res['test_accuracy']:.1f}% | "
                     f"{100 * res['val_accuracy']:.1f}% | {res['wall_time_s'] / 60:.1f} min | {host.get('cpu', '?')}"
                     f"{'' if host.get('native_bf16') else ' (no native bf16)'} | "
                     f"{f'{rate:.0f} GFLOP/s' if rate else '-'} |")
    lines += ["", f"Long attention: {walls['eager'] / walls['long-attention']:.2f}x less wall time for the same run "
                  f"(`python tools/lra_wall.py --out {out}`; both variants back to back on one host)."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
