"""result.json: what one run did and measured, naming the body that actually ran."""
from __future__ import annotations

from pathlib import Path

import torch

from fpt.run.experiment import Experiment
from fpt.tasks import TaskData
from fpt.core.host import device_name, host_kind, versions


def trained_groups(counts: dict) -> list[str]:
    """The groups that exist in this model and train (`--train all` on the LSTM: input, output, recurrent)."""
    return [g for g, c in counts["groups"].items() if c["trainable"]]


def describe_body(exp: Experiment) -> str:
    """What ran as the body, in words: 'minilm (pretrained)', 'LSTM 3 x 768 (random init)'."""
    if exp.backbone is None:
        a = architecture(exp)
        return f"{a['kind'].removesuffix('Body')} {a['layers']} x {a['width']} (random init)"
    return f"{exp.cfg.backbone} ({exp.cfg.init}{' init' if exp.cfg.init == 'random' else ''})"


def result_record(exp: Experiment, state: dict, counts: dict, weights_sha: str, data_sha: str, status: str,
            wall: float, run_dir: Path, test: dict | None) -> dict:
    """The run's record. `test_accuracy` is the best-validation weights' (the model that `fpt evaluate`,
    `predict` and `load_run` use), measured once at the end; `test_accuracy_at_best_val` is the same figure
    under the name earlier fpt versions gave it. `train_accuracy` and `val_accuracy` are the last evaluation's;
    `train_accuracy_at_best` is the training accuracy over the steps before the best validation step."""
    cfg = exp.cfg
    last, best = state["last"] or {}, state.get("best") or {}
    transformer = exp.backbone is not None
    return {
        "task": cfg.task, "model": cfg.model,
        "backbone": cfg.backbone if transformer else None, "init": cfg.init if transformer else "random",
        "body": describe_body(exp), "train": trained_groups(counts),
        "status": status, "seed": cfg.seed, "steps": state["step"],
        "trainable_params": counts["trainable_params"], "total_params": counts["total_params"],
        "trainable_pct": round(counts["trainable_pct"], 4),
        "train_accuracy": last.get("train_accuracy"), "train_loss": last.get("train_loss"),
        "val_accuracy": last.get("val_accuracy"),
        "test_accuracy": test["accuracy"] if test else None, "test_loss": test["loss"] if test else None,
        "best_val_accuracy": state["best_val"] if state["best_val"] >= 0 else None,
        "best_step": state["best_step"], "test_accuracy_at_best_val": test["accuracy"] if test else None,
        "train_accuracy_at_best": best.get("train_accuracy"),
        "reported_weights": "best validation step" if "val" in exp.data.splits else "last step (no val split)",
        "wall_time_s": round(wall, 2), "device": device_name(exp.device), "host": host_kind(),
        "majority_test_accuracy": majority_accuracy(exp.data, "test"),
        "precision": cfg.precision, "precision_auto": exp.precision_info,
        "backbone_source": exp.backbone.source if transformer else None,
        "weights_sha256": weights_sha, "data_sha256": data_sha,
        "features_computed": exp.cache.computed if exp.cache is not None else None,
        "data_notes": list(exp.data.notes),
        "data_sources": dict(getattr(exp.data, "sources", None) or {}),
        "architecture": architecture(exp),
        "split_sizes": {name: len(split.y) for name, split in exp.data.splits.items()},
        "param_groups": counts["groups"], "versions": versions(), "config": cfg.to_dict(),
        "run_dir": str(run_dir),
    }


def majority_accuracy(data: TaskData, split: str) -> float | None:
    """Accuracy of always predicting each target's most common label in `split`: the floor a result
    must clear to show that anything was learned (bit tasks: about 0.5; ListOps: about 0.17)."""
    if split not in data.splits:
        return None
    y = data.splits[split].y.reshape(len(data.splits[split].y), -1)  # (N, targets)
    if not len(y):
        return None
    return round(float(sum(torch.bincount(col).max() for col in y.T.long()) / y.numel()), 4)


def architecture(exp: Experiment) -> dict:
    """What the body is, in its own words (`describe()`): kind, depth, width, heads, a one-line summary."""
    return exp.model.body.describe()


def export_backbone(exp: Experiment, folder: str) -> str:
    """Save the run's body as a Hugging Face checkpoint folder, usable as `--backbone FOLDER`.

    The paper's "Bit" row: `--task bit-memory --init random --train all --export-backbone DIR`,
    then `--backbone DIR` (pretrained, frozen) on the other tasks.
    """
    model = exp.backbone.model
    model.save_pretrained(folder)
    for f in Path(folder).iterdir():  # a folder to share: readable as any other (safetensors writes 0600)
        f.chmod(0o644)
    return str(folder)
