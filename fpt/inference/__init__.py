"""Use what was trained: a run's model for inference (`fpt.load_run`; `fpt evaluate`, `fpt predict`).

A run directory holds config.yaml, checkpoint.pt (the trainable weights; the frozen body is rebuilt from the
config and checked against the checkpoint's weights_sha256), result.json, and for a task file's run task.json
(fpt/tasks/custom/ `CustomTask.encoding()`: the task file's settings, the sizes the model was built from,
the vocabulary or the class names), with which new inputs are read exactly as the training data was.

    run = fpt.load_run("runs/my-data")
    run.evaluate("test")                       # {"accuracy": ..., "loss": ..., "examples": ...}
    run.predict("new.csv")                     # one dict per example: predicted label, probabilities
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fpt.backbones import Backbone
from fpt.core.config import TrainConfig, from_dict
from fpt.core.errors import FPTError
from fpt.models.model import FPT
from fpt.tasks import Batch, Task, TaskData
from fpt.tasks.base import PaddedTokenData, check_split
from fpt.run.checkpoint import read_checkpoint
from fpt.run.experiment import Experiment
from fpt.run.files import CHECKPOINT, METRICS, RESUMABLE_CHANGES, TASK
from fpt.run.step import evaluate

SPLITS = ("train", "val", "test", "all")  # all: every example of the task's files, no split held out
#: Which of a run's weights to use: those of its best validation step (what result.json reports), or its last.
CHECKPOINTS = ("best", "last")
#: `fpt export`'s folder (fpt/inference/export.py writes it; load_run reads it): the trained tensors and the record
EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "config.json"


@dataclass
class Run:
    """A trained run, ready for inference: the model in eval mode with the checkpoint's weights, and its task."""

    run_dir: Path
    cfg: TrainConfig  # the run's, on this device
    model: FPT
    backbone: Backbone | None
    device: torch.device
    task: Task  # a task file's run: CustomTask with the run's encoding (`read_inputs`); else the registered task
    step: int  # the training step of the weights loaded
    weights: str = "best"  # which of the run's weights: best (validation) or last
    frozen_sha256: str = "none"  # the frozen body's weight hash, as built (before any bf16 storage)

    def __repr__(self) -> str:
        body = self.model.body
        return (f"Run({str(self.run_dir)!r}: {self.cfg.task} on {self.cfg.backbone if self.backbone else type(body).__name__}"
                f" ({self.cfg.init}), {self.weights} weights of step {self.step}, {self.device})")

    @property
    def spec(self):
        return self.model.spec

    @property
    def from_task_file(self) -> bool:
        from fpt.tasks.custom import CustomTask

        return isinstance(self.task, CustomTask)

    @property
    def classes(self) -> list[str] | None:
        """Class names in label order where the task has them (image folders), else None."""
        return getattr(self.task, "classes", None) or None

    def encode(self, path: str | Path) -> tuple[TaskData, list[int | str]]:
        """Inputs in the run's task file format (a CSV, a folder of images, an .npz), read as training read its
        data: (data whose one split, "input", holds them, label -1 where unknown; a name per example)."""
        if not self.from_task_file:
            raise FPTError(f"predicting reads inputs in a task file's format; this run trained on {self.cfg.task!r}")
        data, names = self.task.read_inputs(path)
        b = data.splits["input"]
        check_split(Batch(b.x, b.y.clamp(min=0), b.lengths), self.spec, at=f"input {str(path)!r}")
        return data, names

    @torch.inference_mode()
    def logits(self, data: TaskData, split: str = "input") -> torch.Tensor:
        """Logits (N, targets, classes), float32 on the CPU, for every example of `split`."""
        from fpt.models.precision import autocast

        out = []
        for batch in data.eval_batches(split, self.cfg.eval_batch_size):
            batch = batch.to(self.device)
            with autocast(self.cfg.precision, self.device):
                out.append(self.model(batch.x, batch.lengths).float().cpu())
        return torch.cat(out)

    def predict(self, inputs) -> list[dict]:
        """One record per example of `inputs`: a file in the task file's format (a path), in-memory inputs (a
        list of strings for a csv task; an array or tensor for npz and image tasks), or what `encode` returned.
        Each record: example (the input's id column, else its row counted from 0, or its image file), label
        (where known), predicted, predicted_class (where classes have names), probabilities (one per class)."""
        if isinstance(inputs, (str, Path)):  # a path, always (sequences come as a list of strings)
            data, names = self.encode(inputs)
        elif isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], TaskData):
            data, names = inputs
        else:
            if not self.from_task_file:
                raise FPTError(f"predicting reads inputs in a task file's format; this run trained on {self.cfg.task!r}")
            data, names = self.task.read_values(inputs)
            b = data.splits["input"]
            check_split(Batch(b.x, b.y.clamp(min=0), b.lengths), self.spec, at="inputs")
        probs = self.logits(data).softmax(-1)[:, 0]  # (N, 1, C) -> (N, C): a task file's one target per example
        labels, predicted = data.splits["input"].y[:, 0].tolist(), probs.argmax(-1).tolist()
        rows = []
        for name, label, k, p in zip(names, labels, predicted, probs.tolist()):
            row = {"example": name, **({"label": label} if label >= 0 else {}), "predicted": k}
            if self.classes:
                row["predicted_class"] = self.classes[k]
            rows.append({**row, "probabilities": p})
        return rows

    def evaluate(self, split: str = "test", *, task_file: str | None = None) -> dict:
        """Accuracy and loss on `split` (train, val, test, or all: every example of the task's files) of the
        run's task, or of another task file of the same format, read as the run's inputs."""
        from fpt.tasks.custom import CustomTask

        if split not in SPLITS:
            raise FPTError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
        cfg = self.cfg
        if self.from_task_file:
            file = task_file or _task_file_from_anywhere(cfg.task, self.task.encoding())
            if not Path(file).is_file():
                raise FPTError(f"task file {file!r} not found" + ("" if task_file else
                               " (the run's, as named where it trained); pass --task-file"))
            task = CustomTask.as_run(self.task.encoding(), file, hold_out=split != "all")
        elif task_file:
            raise FPTError(f"--task-file needs a run trained on a task file; this run trained on {cfg.task!r}")
        elif split == "all":
            raise FPTError(f"split all is for task files; this run trained on {cfg.task!r}: evaluate val or test")
        else:
            task = self.task
        data = task.load(seed=cfg.seed, data_dir=cfg.data_dir)
        data.validate()  # read as the run's inputs: ids, widths and labels within the run's sizes
        if split != "all" and split not in data.splits:
            raise FPTError(f"task {task.spec.name!r} has no split {split!r}; it has: {', '.join(data.splits)}")
        if split == data.train_split and data.draws_train:
            raise FPTError(f"task {cfg.task!r} draws fresh training examples; evaluate val or test")
        names = list(data.splits) if split == "all" else [split]
        loss = correct = examples = 0.0
        for name in names:  # `fpt.run.step.evaluate`, the code training evaluates with, one split at a time
            kind = PaddedTokenData if isinstance(data, PaddedTokenData) else TaskData
            one = kind(data.spec, {name: data.ready(name)})  # model-ready (ImageData keeps train's images raw)
            exp = Experiment(cfg=cfg, data=one, backbone=self.backbone, model=self.model, device=self.device)
            m, n = evaluate(exp, name), len(one.splits[name])
            loss, correct, examples = loss + m["loss"] * n, correct + m["accuracy"] * n, examples + n
        return {"run_dir": str(self.run_dir), "task": task_file or cfg.task, "split": split, "step": self.step,
                "examples": int(examples), "accuracy": correct / examples, "loss": loss / examples,
                "notes": list(data.notes)}


def load_run(run_dir: str | Path, *, device: str = "auto", batch_size: int | None = None,
             checkpoint: str = "best") -> Run:
    """The run in `run_dir`, ready for inference on `device`: the frozen body rebuilt from the run's config
    (checked against the checkpoint's weights_sha256), the checkpoint's trainable weights on top, eval mode.
    `checkpoint`: best (the weights of the best validation step, whose test accuracy result.json reports;
    the default) or last. `batch_size`: examples per inference batch (default: the run's eval_batch_size)."""
    from fpt.models.factory import build_model
    from fpt.models.model import store_frozen_matmul_weights
    from fpt.tasks import task_from_config
    from fpt.tasks.custom import CustomTask, is_task_file
    from fpt.core.host import pick_device

    run_dir = Path(run_dir)
    if batch_size is not None and batch_size <= 0:
        raise FPTError(f"batch size must be positive, got {batch_size}")
    if not run_dir.is_dir():
        raise FPTError(f"run directory {str(run_dir)!r} does not exist")
    if checkpoint not in CHECKPOINTS:
        raise FPTError(f"unknown checkpoint {checkpoint!r}; choose from: {', '.join(CHECKPOINTS)}")
    exported = is_export(run_dir)  # `fpt export`'s folder: safetensors and JSON, its reported weights only
    if exported:
        ckpt, encoding = read_export(run_dir)
        checkpoint = ckpt["exported"]["weights"]["which"]
    else:
        ckpt, encoding = _read_checkpoint(run_dir), None
        _check_belongs(run_dir, ckpt)
    try:
        cfg = from_dict({**ckpt["config"], "device": device, "compile": False, "compile_mode": "default",
                         **({"eval_batch_size": batch_size} if batch_size is not None else {})})
    except FPTError as e:
        raise FPTError(f"{run_dir / CHECKPOINT}: its config does not load here ({e})") from None
    dev = pick_device(cfg.device)
    if encoding is not None:  # an export of a task file's run
        task = CustomTask.as_run(encoding)
    elif exported and is_task_file(cfg.task):
        raise FPTError(f"{run_dir}/config.json has no task encoding: re-export the run with this fpt")
    elif (run_dir / TASK).is_file():  # a task file's run: its encoding, kept at training time
        try:
            encoding = json.loads((run_dir / TASK).read_text())
            task = CustomTask.as_run(encoding)
        except (ValueError, KeyError, TypeError) as e:
            raise FPTError(f"{run_dir / TASK} is not a task record fpt wrote ({type(e).__name__})") from None
    elif is_task_file(cfg.task):  # a run from before task.json: rebuilt from its training data
        if not Path(cfg.task).is_file():
            raise FPTError(f"{run_dir} has no {TASK} and its task file {cfg.task!r} is not found from here")
        task = CustomTask.as_run(task_from_config(cfg).encoding())
    else:
        task = task_from_config(cfg)
    _check_spec_fits(task.spec, ckpt["trainable"], run_dir)  # before any allocation sized by task.json
    model, backbone = build_model(cfg, task.spec)
    frozen = backbone.weights_sha256() if backbone is not None else "none"
    if frozen != ckpt["weights_sha256"]:
        raise FPTError(f"the frozen body rebuilt from the run's config (backbone {cfg.backbone}, init {cfg.init}, "
                       f"seed {cfg.seed}: weights_sha256 {frozen}) differs from the one {run_dir} trained on "
                       f"({ckpt['weights_sha256']}): install or pass that backbone")
    weights, step = ckpt["trainable"], int(ckpt.get("state", {}).get("step", 0))
    best = ckpt.get("best") or {}
    if checkpoint == "best" and best.get("trainable") is not None:
        weights, step = best["trainable"], int(best["step"])
    elif checkpoint == "best" and "format" not in ckpt:  # fpt before format 2 kept the last weights only
        import sys

        print(f"fpt: note: {run_dir / CHECKPOINT} is from an fpt that kept only the last weights (step {step}); "
              f"result.json's test accuracy is its best validation step's", file=sys.stderr)
    _load_trainable(model, weights, run_dir / CHECKPOINT)
    model.to(dev).eval()
    if cfg.precision == "auto":  # a run records the precision it resolved; auto only in a hand-made config
        from fpt.models.precision import resolve

        cfg = cfg.replace(precision=resolve("auto", dev, model.width)[0])
    if cfg.precision == "bf16":  # as training stored them
        store_frozen_matmul_weights(model, torch.bfloat16)
    return Run(run_dir=run_dir, cfg=cfg, model=model, backbone=backbone, device=dev, task=task, step=step,
               weights=checkpoint, frozen_sha256=frozen)


def is_export(folder: Path) -> bool:
    """A folder `fpt export` wrote (a run directory has checkpoint.pt instead)."""
    if not (folder / EXPORT_CONFIG).is_file() or not (folder / EXPORT_WEIGHTS).is_file():
        return False
    try:
        return "fpt_export" in json.loads((folder / EXPORT_CONFIG).read_text())
    except ValueError:
        return False


def read_export(folder: Path) -> tuple[dict, dict | None]:
    """(a checkpoint-like record: config, weights_sha256, trainable, step; a task file's encoding or None),
    read from an exported folder: safetensors and JSON, nothing executable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / EXPORT_CONFIG).read_text())
        weights = load_file(str(folder / EXPORT_WEIGHTS))
        record = {"config": config["config"], "weights_sha256": config["backbone"]["weights_sha256"],
                  "trainable": weights, "state": {"step": config["weights"]["step"]}, "format": "export",
                  "exported": config}
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise FPTError(f"{folder} is not a folder `fpt export` wrote ({type(e).__name__}: {e})") from None
    return record, config["task"].get("encoding")


def _task_file_from_anywhere(task: str, encoding: dict) -> str:
    """The run's task file as named where it trained, else by the absolute path training recorded
    (task.json's `path`): `fpt evaluate --run-dir` works after the run folder, or the shell, moved."""
    if Path(task).is_file():
        return task
    recorded = encoding.get("path")
    return recorded if recorded and Path(recorded).is_file() else task


def _read_checkpoint(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        why = ("the run stopped before its first checkpoint" if (run_dir / METRICS).exists()
               else "no run trained there")
        raise FPTError(f"{run_dir} holds no {CHECKPOINT} ({why}): nothing to evaluate or predict with")
    return read_checkpoint(path, ("config", "weights_sha256", "trainable"))


def _check_spec_fits(spec, weights: dict, run_dir: Path) -> None:
    """The task's sizes (a task file's run: RUN_DIR/task.json) against the checkpoint's input and output
    layers, before the model is built from them: a task.json that disagrees is one line, not an allocation
    of whatever size it names."""
    checks = []
    inp, out = weights.get("input_layer.weight"), weights.get("output_layer.weight")
    if inp is not None:
        checks.append(("vocabulary size", spec.vocab_size, inp.shape[0]) if spec.input_kind == "tokens"
                      else ("token width", spec.token_dim, inp.shape[-1]))
    if out is not None:
        checks.append(("classes x targets per token", spec.targets_per_token * spec.num_classes, out.shape[0]))
    for what, task_size, ckpt_size in checks:
        if task_size != ckpt_size:
            raise FPTError(f"{run_dir}: the task's {what} is {task_size}, the checkpoint's is {ckpt_size} "
                           f"({TASK} or the task does not belong to this checkpoint)")


def _check_belongs(run_dir: Path, ckpt: dict) -> None:
    """The checkpoint is this run's: its config is the run's config.yaml (but for keys a resume may change),
    so another run's checkpoint copied into the folder is refused, not evaluated under this run's name."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return  # a run folder made by hand: the checkpoint's own config is all there is
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise FPTError(f"{path} is not a config fpt wrote") from None
    if not isinstance(saved, dict):
        raise FPTError(f"{path} is not a config fpt wrote")
    config = ckpt["config"] if isinstance(ckpt.get("config"), dict) else {}
    free = RESUMABLE_CHANGES | {"precision"}
    differ = sorted(k for k in saved if k in config and k not in free and saved[k] != config[k])
    if differ:
        k = differ[0]
        raise FPTError(f"{run_dir / CHECKPOINT} is not this run's: its {k} is {config[k]!r}, {path} has "
                       f"{saved[k]!r} (another run's checkpoint copied in?)")


def _load_trainable(model: FPT, weights: dict, path: Path) -> None:
    """The checkpoint's trainable tensors into `model`: exactly the parameters that train, of the same shapes;
    one line naming the first that differs (a vocabulary or class count other than the run's)."""
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    for name, t in weights.items():
        if name in params and tuple(t.shape) != tuple(params[name].shape):
            what = {"input_layer": "vocabulary or token width", "output_layer": "class count"}.get(
                name.split(".")[0], "sizes")
            raise FPTError(f"{path}: {name} is {tuple(t.shape)}, the model built from the run's task has "
                           f"{tuple(params[name].shape)}: the {what} differs from the run's")
    if set(weights) != wanted:
        missing, extra = sorted(wanted - set(weights)), sorted(set(weights) - wanted)
        raise FPTError(f"{path} does not fit the model built from the run's config (missing "
                       f"{', '.join(missing[:3]) or 'none'}; unexpected {', '.join(extra[:3]) or 'none'})")
    model.load_state_dict(weights, strict=False)


def write_predictions(rows: list[dict], classes: int | list[str], out: str | None) -> str:
    """`rows` (Run.predict) as CSV, or JSON lines where `out` ends in .jsonl; into `out`, or returned when None.
    CSV columns: example (the input's id column, else its row or file), label (where any is known), predicted,
    predicted_class (where classes have names), then one probability column per class: p_<name> where the
    classes have names (`classes`: their names), else p_0..p_{C-1} (`classes`: their count)."""
    if out is not None and str(out).endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        head = ["example"] + ["label"] * any("label" in r for r in rows) + ["predicted"]
        head += ["predicted_class"] * any("predicted_class" in r for r in rows)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        names = classes if isinstance(classes, list) else list(range(classes))
        w.writerow(head + [f"p_{k}" for k in names])
        for r in rows:
            w.writerow([r.get(c, "") for c in head] + [f"{p:.6g}" for p in r["probabilities"]])
        text = buf.getvalue()
    if out is None:
        return text
    from fpt.core.files import write_text_atomic

    if not Path(out).parent.is_dir():
        raise FPTError(f"cannot write {out}: its folder does not exist")
    write_text_atomic(Path(out), text)
    return text
