"""`fpt export RUN --out DIR`: a trained FPT as the shareable artefact PEFT and Hugging Face users expect.

    DIR/model.safetensors   the trained tensors only (the reported, best-validation weights): nothing executable
    DIR/config.json         the fpt config, the task (its sizes, and a task file's vocabulary or class names),
                            the backbone's name and weight hash, the metrics with the split each came from
    DIR/README.md           a model card: task, data, splits, metrics, recipe, host, how to load, limitations

The frozen body is not copied (it is 99.9% of the model, and its owner's to distribute): `fpt.load_run(DIR)`,
`fpt evaluate --run-dir DIR` and `fpt predict --run-dir DIR` rebuild it from the backbone named in
config.json on the machine at hand, and refuse, in one line, a body whose weight hash differs.
"""
from __future__ import annotations

import json
from pathlib import Path


from fpt.core.errors import FPTError

from fpt.inference import EXPORT_CONFIG as CONFIG
from fpt.inference import EXPORT_WEIGHTS as WEIGHTS
from fpt.inference import load_run

CARD = "README.md"
EXPORT_FORMAT = 1


def export_run(run_dir: str | Path, out: str | Path, *, checkpoint: str = "best") -> Path:
    """Write `out` from the run in `run_dir` (its best-validation weights, or `checkpoint="last"`)."""
    from safetensors.torch import save_file

    from fpt.core.files import write_text_atomic

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FPTError(f"export folder {str(out)!r} is not empty: choose a new --out (nothing was overwritten)")
    run = load_run(run_dir, device="cpu", checkpoint=checkpoint)
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    weights = {n: p.detach().float().contiguous() for n, p in run.model.named_parameters() if p.requires_grad}
    config = {
        "fpt_export": EXPORT_FORMAT,
        "config": run.cfg.to_dict(),
        "task": {"name": run.spec.name, "spec": _spec_dict(run.spec),
                 "encoding": run.task.encoding() if run.from_task_file else None,
                 "class_names": run.classes},
        "backbone": {"name": run.cfg.backbone if run.backbone is not None else None,
                     "init": run.cfg.init, "weights_sha256": _weights_sha(run),
                     "source": run.backbone.source if run.backbone is not None else None},
        "weights": {"which": run.weights, "step": run.step, "tensors": sorted(weights),
                    "trainable_params": result.get("trainable_params") or sum(t.numel() for t in weights.values())},
        "metrics": {k: result.get(k) for k in ("test_accuracy", "test_loss", "best_val_accuracy", "best_step",
                                               "train_accuracy_at_best", "majority_test_accuracy", "split_sizes",
                                               "data_sources", "reported_weights")},
        "run": {k: result.get(k) for k in ("body", "train", "steps", "wall_time_s", "host", "device", "precision",
                                           "versions", "data_sha256")},
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt", "fpt_export": str(EXPORT_FORMAT)})
    (out / WEIGHTS).chmod(0o644)  # a file to share: readable as any other
    write_text_atomic(out / CONFIG, json.dumps(config, indent=2, default=str) + "\n")
    write_text_atomic(out / CARD, model_card(config))
    return out


def _spec_dict(spec) -> dict:
    import dataclasses

    return dataclasses.asdict(spec)


def _weights_sha(run) -> str:
    return run.frozen_sha256


def _pct(value) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "–"


def model_card(config: dict) -> str:
    """README.md of an export: what a reader needs before trusting or loading the weights."""
    cfg, task, body, m, r = config["config"], config["task"], config["backbone"], config["metrics"], config["run"]
    sizes = m.get("split_sizes") or {}
    sources = m.get("data_sources") or {}
    splits = "\n".join(f"| {name} | {n or 'generated afresh each step'} | {sources.get(name, '')} |"
                       for name, n in sizes.items())
    classes = task.get("class_names")
    lines = [
        f"# FPT on {task['name']}",
        "",
        f"A frozen pretrained transformer ({r.get('body') or body['name']}) with {config['weights']['trainable_params']:,} "
        f"trained parameters ({', '.join(r.get('train') or cfg.get('train') or [])}), trained with "
        f"fpt on `{cfg['task']}`. Only the trained tensors are here (`{WEIGHTS}`); the "
        f"frozen body is rebuilt from backbone `{body['name']}` (weights sha256 `{body['weights_sha256']}`).",
        "",
        "## Metrics",
        "",
        "| metric | value | split |",
        "|---|---|---|",
        f"| test accuracy | {_pct(m.get('test_accuracy'))} | test, measured once on these weights |",
        f"| best validation accuracy | {_pct(m.get('best_val_accuracy'))} | val (step {m.get('best_step')}) |",
        f"| training accuracy before that step | {_pct(m.get('train_accuracy_at_best'))} | train |",
        f"| majority class | {_pct(m.get('majority_test_accuracy'))} | test |",
        "",
        "## Data",
        "",
        "| split | examples | source |",
        "|---|---|---|",
        splits or "| – | – | – |",
        "",
        *( [f"Classes (label order): {', '.join(map(str, classes))}.", ""] if classes else []),
        "## Recipe",
        "",
        f"- steps {r.get('steps')}, batch {cfg.get('batch_size')}, lr {cfg.get('lr')} ({cfg.get('lr_schedule')}, "
        f"warm-up {cfg.get('warmup_steps')}), dropout {cfg.get('dropout')}, seed {cfg.get('seed')}, "
        f"precision {r.get('precision')}",
        f"- weights: {config['weights']['which']} (step {config['weights']['step']})",
        f"- trained on {r.get('device')} ({(r.get('host') or {}).get('cpu', '')}), {r.get('wall_time_s')} s; "
        f"data sha256 `{r.get('data_sha256')}`",
        "",
        "## Load",
        "",
        "```python",
        "import fpt",
        "run = fpt.load_run(\"THIS_FOLDER\")      # needs the backbone named above, installed or as a local folder",
        "run.predict(\"new.csv\")                 # or run.evaluate(\"test\") where the task's data is present",
        "```",
        "",
        "`fpt evaluate --run-dir THIS_FOLDER` and `fpt predict --run-dir THIS_FOLDER INPUT` work the same way.",
        "",
        "## Limitations",
        "",
        "- The figures are one run's (one seed), on the splits above; they say nothing of other data.",
        "- A different frozen body (another backbone version) is refused: the trained tensors fit this one only.",
        "- FPT trains about 0.1% of a transformer; the paper's claim that this matches full training holds on "
        "some tasks and budgets only (fpt's docs/results.md).",
        "",
    ]
    return "\n".join(lines)
