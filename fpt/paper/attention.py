"""Attention maps read from the frozen model through forward hooks (the paper's Bit XOR figure).

The attention modules of the backbone (its Architecture row's
`attention_map_class`) return `(output, weights)` under eager attention; a hook
records the weights as the model runs. Nothing is recomputed outside the model.
"""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import torch

from fpt import fastops
from fpt.core.errors import FPTError, UnsafeFile


@torch.inference_mode()
def attention_maps(exp, x: torch.Tensor) -> torch.Tensor:
    """Mean attention over the batch: (layers, heads, T, T). Needs attn_implementation='eager'."""
    body = exp.model.body
    arch = getattr(body, "arch", None)
    if arch is None:
        raise FPTError("attention maps need a transformer body")
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if isinstance(output, tuple) and len(output) > 1 and output[1] is not None and output[1].dim() == 4:
            captured.append(output[1].float().mean(0).cpu())  # (H, T, T)

    def ask_for_weights(_module, args, kwargs):
        return args, {**kwargs, "output_attentions": True}

    modules = [m for m in body.model.modules() if type(m).__name__ == arch.attention_map_class]
    handles = [m.register_forward_hook(hook) for m in modules]
    # NOTE: MPNet's attention returns its weights only when asked (an `output_attentions` argument); the
    # others return them under eager attention whatever is asked
    handles += [m.register_forward_pre_hook(ask_for_weights, with_kwargs=True) for m in modules
                if "output_attentions" in inspect.signature(type(m).forward).parameters]
    exp.model.eval()
    try:
        # every row of the last block too (fpt/backbones/readout.py would run it at the read-out rows only); and the
        # eager math, which fpt's CPU attention would leave for SDPA at long lengths
        with body.full_last_block(), fastops.attention_weights_wanted():
            exp.model(x.to(exp.device))
    finally:
        for h in handles:
            h.remove()
    if not captured:
        raise FPTError("no attention weights were captured (is attn_implementation 'eager'?)")
    if len(captured) != len(modules):
        raise FPTError(f"attention weights came from {len(captured)} of {len(modules)} attention layers")
    return torch.stack(captured)  # (L, H, T, T)


def input_bit_mass(maps: torch.Tensor, n_bits: int) -> torch.Tensor:
    """(L, H): attention mass each head puts, from output bit i, on input bits i and n + i."""
    t = maps.shape[-1]
    queries = torch.arange(t - n_bits, t)  # the tokens the output is read from
    mass = maps[:, :, queries, queries - n_bits] + maps[:, :, queries, queries]
    # the two inputs of output bit i are tokens i and n + i; the reading token is n + i
    return mass.mean(-1)


def load_trained(result_path: Path):
    """Rebuild a finished run with eager attention and its trained weights."""
    from fpt.run.checkpoint import read_checkpoint
    from fpt.core.config import from_dict
    from fpt.run.experiment import build_experiment

    checkpoint = result_path.parent / "checkpoint.pt"
    if not checkpoint.is_file():  # committed results keep no checkpoints
        raise FPTError(f"{result_path.parent} has no checkpoint.pt on this machine (committed runs keep none)")
    ckpt = read_checkpoint(checkpoint, ("config", "trainable"))  # tensors and data only: never runs code
    try:
        config = json.loads(result_path.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FPTError(f"{result_path} is not a result fpt wrote ({type(e).__name__})") from None
    cfg = from_dict({**config, "attn_implementation": "eager", "device": "cpu", "precision": "fp32",
                     "last_block_at_readout": False})
    exp = build_experiment(cfg)
    best = ckpt.get("best") or {}
    exp.model.load_state_dict(best.get("trainable") or ckpt["trainable"], strict=False)  # the reported weights
    return exp


def plot_bit_xor_attention(matrix, records: list[dict], out: Path) -> Path | None:
    """For each row's seed-0 Bit XOR run: the head that most attends from each output bit to its inputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for row in matrix.rows:
        runs = [r for r in records if r["row_slug"] == row.slug and r["task"] == "bit-xor" and r["seed"] == 0
                and r.get("status") in ("finished", "early_stopped")]
        if not runs:
            continue
        try:
            exp = load_trained(Path(runs[0]["run_dir"]) / "result.json")
        except UnsafeFile:
            raise  # a planted payload is refused loudly, never skipped as a missing checkpoint
        except FPTError as e:
            print(f"attention_bit_xor.png: {row.name} left out: {e}", file=sys.stderr)
            continue
        x = exp.data.splits["test"].x[:256]
        try:
            maps = attention_maps(exp, x)
        except FPTError:
            continue  # not a transformer body (an LSTM row)
        n = exp.data.spec.output_tokens
        mass = input_bit_mass(maps, n)
        layer, head = divmod(int(mass.argmax()), mass.shape[1])
        panels.append((row.name, maps[layer, head], layer, head, float(mass[layer, head]), mass))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels) + 1, 4), squeeze=False, sharey=True,
                             layout="constrained")
    summary = {}
    for ax, (name, m, layer, head, score, mass) in zip(axes[0], panels):
        t = m.shape[-1]
        im = ax.imshow(m[t - n:], cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_yticks(range(n), [f"out {i}" for i in range(n)])
        ax.tick_params(axis="y", labelleft=ax is axes[0][0])  # one set of row labels, on the first panel
        ax.set_xticks(range(t), [f"a{i}" if i < n else f"b{i - n}" for i in range(t)], fontsize=7)
        ax.set_title(f"{name}\nlayer {layer} head {head}: {100 * score:.0f}% on the input bits", fontsize=9)
        summary[name] = {"best_layer": layer, "best_head": head, "mass_on_input_bits": score,
                         "per_head_mass": mass.tolist()}
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="attention")
    fig.suptitle("Bit XOR: attention from each output bit (rows) to the inputs a, b (columns)", fontsize=10)
    path = out / "attention_bit_xor.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    (out / "attention_bit_xor.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


def _seed0_runs(matrix, records: list[dict], task: str) -> list[tuple[str, Path]]:
    """(row name, result.json) of each row's finished seed-0 run on `task`."""
    out = []
    for row in matrix.rows:
        runs = [r for r in records if r["row_slug"] == row.slug and r["task"] == task and r["seed"] == 0
                and r.get("status") in ("finished", "early_stopped")]
        if runs:
            out.append((row.name, Path(runs[0]["run_dir"]) / "result.json"))
    return out


def plot_image_attention(matrix, records: list[dict], out: Path, *, task: str = "mnist",
                         examples: int = 256) -> Path | None:
    """For each row's seed-0 run on an image task: where each head of the last block looks from the read-out
    token (the last patch), averaged over test images, drawn on the image's patch grid (layers x heads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for name, result_path in _seed0_runs(matrix, records, task):
        try:
            exp = load_trained(result_path)
        except UnsafeFile:
            raise
        except FPTError as e:
            print(f"attention_{task}.png: {name} left out: {e}", file=sys.stderr)
            continue
        try:
            maps = attention_maps(exp, exp.data.splits["test"].x[:examples])  # (L, H, T, T)
        except FPTError:
            continue  # not a transformer body (an LSTM row)
        panels.append((name, maps[:, :, -1, :]))  # (L, H, T): from the read-out token
    if not panels:
        return None
    layers, heads, t = panels[0][1].shape
    side = int(round(t ** 0.5))
    if side * side != t:
        return None  # not a square patch grid
    fig, axes = plt.subplots(len(panels) * layers, heads, figsize=(1.1 * heads, 1.15 * layers * len(panels) + 0.6),
                             squeeze=False)
    summary = {}
    for p, (name, reads) in enumerate(panels):
        for layer in range(layers):
            for head in range(heads):
                ax = axes[p * layers + layer, head]
                ax.imshow(reads[layer, head].reshape(side, side), cmap="viridis")
                ax.set_xticks([])
                ax.set_yticks([])
                if head == 0:
                    ax.set_ylabel(f"{name[:14]}\nL{layer}", fontsize=6, rotation=0, ha="right", va="center")
                if p == 0 and layer == 0:
                    ax.set_title(f"h{head}", fontsize=7)
        own = reads[:, :, -1]  # the read-out token attending to itself
        summary[name] = {"mean_self_attention_of_readout": float(own.mean()),
                         "max_patch_weight_per_layer": reads.amax(-1).mean(-1).tolist()}
    fig.suptitle(f"{task}: attention from the read-out token to each {side}x{side} patch (mean of {examples} "
                 f"test images)", fontsize=9)
    fig.tight_layout(rect=(0.06, 0, 1, 0.97))
    path = out / f"attention_{task}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    (out / f"attention_{task}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


#: The attention figures `fpt report` draws, per task: the paper's Bit XOR figure, and MNIST's patch maps.
#: Kept here (the figure layer), not on the task entries, so that tasks never import the training code.
TASK_FIGURES = {"bit-xor": plot_bit_xor_attention, "mnist": plot_image_attention}
