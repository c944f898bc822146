"""The training loop: build from a config, train, evaluate, checkpoint, resume.

One run writes into its run directory:
  config.yaml     the resolved config
  metrics.jsonl   one record per evaluation (train loss/accuracy since the last one, validation)
  checkpoint.pt   trainable weights (last and best-validation), optimizer and every RNG state, as tensors
                  and plain data only (fpt/checkpoint.py: loading one never runs code)
  result.json     the final record (see `_result`): test accuracy measured once, at the end, on the
                  best-validation weights, the model `fpt evaluate` / `predict` / `load_run` use

`train` reads top to bottom: own the run directory, read the checkpoint (--resume), build, then `run`:
optimizer and state (restored), the loop, the result. Under torchrun (`fpt train --nproc N`) every process
hands over to fpt/distributed.py, which runs these same steps with its `Ranks` where this file passes
`OneProcess` (each hook the plain single-process case) and the Experiment made data-parallel.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fpt.backbones import Backbone
from fpt.bodies import build_model
from fpt.checkpoint import read_checkpoint, rng_state, save_checkpoint, set_rng_state
from fpt.config import CUDA_GRAPH_MODES, TrainConfig, save_yaml
from fpt.errors import FPTError
from fpt.features import FeatureCache
from fpt.precision import autocast
from fpt.precision import resolve as resolve_precision
from fpt.model import FPT, count_parameters, store_frozen_matmul_weights, summarize_counts
from fpt.tasks import Batch, TaskData, task_from_config
from fpt.tblog import ScalarLog, summary_writer_class
from fpt.utils import (WriteFailed, device_name, hold_folder, host_kind, keep_freed_cpu_memory, pick_device,
                       seed_everything, versions, write_json_atomic, write_text_atomic)

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
METRICS = "metrics.jsonl"
TASK = "task.json"  # a task file's run: what reading new inputs as its own needs (fpt/inference.py)
# Config keys a resumed run may change: they do not alter what was already computed.
RESUMABLE_CHANGES = {"steps", "early_stop", "device", "run_dir", "eval_batch_size", "data_dir",
                     "export_backbone", "tensorboard"}
CHECKPOINT_KEYS = ("config", "weights_sha256", "trainable", "optimizer", "rng", "state")
# what `--overwrite` deletes: every file a run (or a sweep's record of it) writes into its directory
RUN_FILES = (CHECKPOINT, RESULT, METRICS, "config.yaml", "error.json", CHECKPOINT + ".tmp", RESULT + ".tmp",
             "config.yaml.tmp", TASK)
START_OVER = "start it over with --overwrite (deletes the run's files) or choose another --run-dir"


@dataclass
class Experiment:
    """Everything built from one config, before training."""

    cfg: TrainConfig
    data: TaskData
    backbone: Backbone | None  # None for a body that is not a transformer backbone (the LSTM row)
    model: FPT
    device: torch.device
    cache: FeatureCache | None = None  # output-only training from cached features
    frozen_sha256: str | None = None  # hash of the body as built, before any bf16 storage
    precision_info: dict = field(default_factory=dict)  # what `precision: auto` decided and measured
    tensorboard: ScalarLog | None = None  # --tensorboard: opened when training starts (rank 0)
    data_fingerprint: str | None = None

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def logits(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.logits(x, lengths)
        return self.model(x, lengths)

    def autocast(self):
        """The run's autocast context (fp32: none), for every forward pass of its model."""
        return autocast(self.cfg.precision, self.device)

    def data_sha256(self) -> str:
        """Fingerprint of the task's data as loaded (TaskData.fingerprint), computed once."""
        if self.data_fingerprint is None:
            self.data_fingerprint = self.data.fingerprint()
        return self.data_fingerprint

    def weights_sha256(self) -> str:
        """Hash of the body's weights as built (all of them train in the LSTM row: nothing to check)."""
        if self.frozen_sha256 is None:
            self.frozen_sha256 = self.backbone.weights_sha256() if self.backbone is not None else "none"
        return self.frozen_sha256


def build_experiment(cfg: TrainConfig) -> Experiment:
    """Task data, backbone and FPT model for `cfg`, with exactly `cfg.train` learning."""
    seed_everything(cfg.seed)
    data = task_from_config(cfg).load(seed=cfg.seed, data_dir=cfg.data_dir)
    data.validate()  # once, at load: finite inputs, labels and ids in range, one shape (fpt/tasks/base.py)
    if cfg.tensorboard:
        summary_writer_class()  # missing: one line naming the extra, before anything trains
    model, backbone = build_model(cfg, data.spec)  # the config's model row, cfg.train learning
    device = pick_device(cfg.device)
    resolved, precision_info = resolve_precision(cfg.precision, device, model.width)
    cfg = cfg.replace(precision=resolved)  # from here on fp32 or bf16
    exp = Experiment(cfg=cfg, data=data, backbone=backbone, model=model.to(device), device=device,
                     precision_info=precision_info)
    if cfg.precision == "bf16":
        exp.weights_sha256()  # the same hash as an fp32 run of the same weights
        store_frozen_matmul_weights(exp.model, torch.bfloat16)
    check_step_memory(exp)  # before the first step allocates: one line, not the OOM killer
    if cfg.compile:
        compile_model(exp.model, cfg.compile_mode, device)
    if cfg.cache_features:
        exp.cache = FeatureCache(exp.model, exp.autocast)
    return exp


def available_memory(device: torch.device) -> int | None:
    """Bytes a step may use on `device`: the GPU's free memory, or the host's MemAvailable (Linux); None
    where it cannot be read (no check)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def step_memory_per_example(exp: Experiment) -> int:
    """An upper estimate of what one training example's activations take (bytes, fp32): per layer and
    token about 16 values of the width (projections, feed-forward, norms, residuals) and, where attention
    builds the T x T scores, 2 per head and key (probabilities and dropout mask); 10 values of the width per
    layer and token for the LSTM."""
    spec, width = exp.data.spec, exp.model.width
    t = spec.seq_len
    if exp.backbone is None:
        layers = len(getattr(exp.model.body, "lstms", [])) or 1
        per_token = 10 * width
    else:
        layers = exp.backbone.num_layers
        heads = getattr(exp.backbone.model.config, "num_attention_heads", 1) or 1
        per_token = 16 * width + (0 if _tiled_attention(exp) else 2 * heads * t)
    return 4 * (layers * t * per_token + t * max(spec.token_dim, 1))


def _tiled_attention(exp: Experiment) -> bool:
    """Whether the run's attention never builds the T x T scores: fpt's tiled CPU kernel (bf16, a long
    sequence; fpt/fastops/long_attention_kernel.py) or torch's fused kernel (no attention dropout)."""
    from fpt.fastops.long_attention_kernel import LONG_ATTENTION_MIN_TOKENS, long_attention_available

    if exp.cfg.attn_implementation == "eager" or exp.data.spec.seq_len < LONG_ATTENTION_MIN_TOKENS:
        return False
    if exp.device.type == "cpu":
        return (exp.cfg.precision == "bf16" and long_attention_available(torch.bfloat16)) or exp.cfg.dropout == 0
    return True  # a GPU's fused SDPA kernels


def check_step_memory(exp: Experiment) -> None:
    """Refuse, in one line with the largest batch that fits, a training step whose activations alone would
    not fit in the memory this machine has free (`--batch-size 100000`, a 4096-token image task)."""
    free = available_memory(exp.device)
    if free is None or exp.cfg.cache_features:
        return
    per_example = step_memory_per_example(exp)
    need = per_example * exp.cfg.batch_size
    if need <= 0.9 * free:
        return
    fits = int(0.9 * free // per_example)
    gb = lambda n: f"{n / 2**30:.1f} GB"  # noqa: E731
    what = f"{exp.data.spec.seq_len} tokens x width {exp.model.width}"
    if fits < 1:
        raise FPTError(f"one training example ({what}) needs about {gb(per_example)} of activations, more than "
                       f"the {gb(free)} free here: shorten the sequences (a larger patch_size, a smaller "
                       f"image_size or max_len)")
    raise FPTError(f"a training step at batch {exp.cfg.batch_size} ({what}) needs about {gb(need)}, more than "
                   f"the {gb(free)} free here: the largest batch that fits is about {fits} (--batch-size {fits})")


def compile_caches_off() -> None:
    """Turn off inductor's FX-graph and AOTAutograd caches for this process.

    NOTE: with CUDA graphs, a step loaded from these caches ran 5x slower than the same step compiled
    fresh: MiniLM on MNIST, bf16, torch 2.11 on an H100: 16 ms against 3.3 ms (eager: 11.8 ms). A fresh
    compile costs 15-20 s a run (docs/performance.md, "GPU"). Process-wide: compilation is lazy, at the
    first step, so the setting has to outlive this call.
    """
    import torch._functorch.config
    import torch._inductor.config

    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False


def compile_model(model: torch.nn.Module, mode: str, device: torch.device) -> None:
    """torch.compile `model` in place: parameter names (checkpoints) stay those of the eager model."""
    if device.type == "cpu":
        _check_cpu_compiler()
    if device.type == "cuda" and mode in CUDA_GRAPH_MODES:
        compile_caches_off()
    model.compile(mode=mode)


def missing_cpu_compiler() -> str | None:
    """Why torch.compile cannot build C++ kernels on this CPU (no compiler found), or None."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as e:  # inductor's InvalidCxxCompiler, or anything else its search raises
        return (f"--compile on the CPU needs a C++ compiler (g++ or clang++, or one named by CXX), "
                f"and none was found ({type(e).__name__})")
    return None


def _check_cpu_compiler() -> None:
    """torch.compile writes C++ kernels on the CPU: say so now, not in a traceback at the first step."""
    missing = missing_cpu_compiler()
    if missing:
        raise FPTError(f"{missing}: install one (apt install g++) or drop --compile")


def _describe_precision(info: dict) -> str:
    """'bf16 (auto: bf16 612 vs fp32 180 GFLOP/s)' for a run's start line."""
    text = info.get("resolved", "fp32")
    if info.get("requested") == "auto":
        if "pinned_by" in info:
            text += f" (auto, pinned by {info['pinned_by']})"
        elif "bf16_gflops" in info:
            text += f" (auto: bf16 {info['bf16_gflops']:.0f} vs fp32 {info['fp32_gflops']:.0f} GFLOP/s)"
        else:
            text += " (auto)"
    return text


def loss_and_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over every target, and the number of targets predicted right."""
    logits = logits.float()  # (B, N, C)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    correct = (logits.argmax(-1) == y).sum()
    return loss, correct


def make_optimizer(exp: Experiment) -> torch.optim.Optimizer:
    """Adam over the trainable parameters: the run's (and `fpt bench`'s time-to-accuracy) optimizer."""
    return torch.optim.Adam(exp.trainable, lr=exp.cfg.lr, weight_decay=exp.cfg.weight_decay)


def scheduled_step(exp: Experiment, optimizer: torch.optim.Optimizer, gen: torch.Generator,
                   step: int) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """Gradient step `step` (0-based) of the run's recipe: the next training batch drawn from `gen`, the
    learning rate of the schedule (cfg.lr_at), `train_step`. Returns (batch, loss, correct)."""
    cfg = exp.cfg
    batch = exp.data.train_batch(cfg.batch_size, gen).to(exp.device, non_blocking=True)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr_at(step)
    return (batch, *train_step(exp, optimizer, batch))


def train_step(exp: Experiment, optimizer: torch.optim.Optimizer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on `batch` (already on the device); returns (loss, correct).

    A non-finite loss is returned before any update, so the caller can record the divergence
    with the weights of the last good step. `fpt bench` times exactly this function.
    """
    cfg = exp.cfg
    with exp.autocast():
        logits = exp.logits(batch.x, batch.lengths)
    loss, correct = loss_and_correct(logits, batch.y)
    if not torch.isfinite(loss):
        return loss, correct
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(exp.trainable, cfg.grad_clip)
    optimizer.step()
    return loss, correct


class OneProcess:
    """The points where the processes of a data-parallel run differ, each as one process has it (nothing to
    share, nothing to wait for). fpt/distributed.py's `Ranks` overrides every one (`train_data_parallel`)."""

    is_main = True  # writes the run's files and shows progress

    def describe(self) -> str:
        """What the start line adds after the device: ' x 2 processes (DDP, gloo)' under DDP."""
        return ""

    def error(self, message: str) -> FPTError:
        """The error every process raises together (one line)."""
        return FPTError(message)

    def evaluates(self, batch_index: int) -> bool:
        """Whether this process evaluates batch `batch_index` of a split."""
        return True

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order."""
        return [obj]

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the processes."""
        return list(values)

    def start_streams(self, seed: int, step: int, saved: list[dict] | None) -> None:
        """The dropout streams of processes other than the first (one process: torch's, from the checkpoint)."""

    def stream_states(self) -> list[dict] | None:
        """Every process's dropout stream for the checkpoint, where they differ from torch's one (None)."""
        return None

    def barrier(self) -> None:
        """Wait until every process gets here."""


ONE_PROCESS = OneProcess()


@torch.inference_mode()
def evaluate(exp: Experiment, split: str, processes: OneProcess = ONE_PROCESS) -> dict[str, float]:
    """Accuracy and loss over the whole split, in eval mode (data-parallel: each process some batches)."""
    model, cfg = exp.model, exp.cfg
    was_training = model.training
    model.eval()
    parts = []  # (batch index, loss sum, correct, targets) per batch evaluated here
    for i, batch in enumerate(exp.data.eval_batches(split, cfg.eval_batch_size)):
        if not processes.evaluates(i):
            continue
        batch = batch.to(exp.device)
        with exp.autocast():
            logits = exp.logits(batch.x, batch.lengths)
        loss, right = loss_and_correct(logits, batch.y)
        parts.append((i, loss.item() * batch.y.numel(), int(right), batch.y.numel()))
    model.train(was_training)
    loss_sum, correct, targets = 0.0, 0, 0
    for _, part_loss, part_correct, part_targets in sorted(p for process_parts in processes.gather(parts)
                                                           for p in process_parts):
        loss_sum += part_loss  # in batch order: the same sum as one process
        correct += part_correct
        targets += part_targets
    return {"accuracy": correct / max(targets, 1), "loss": loss_sum / max(targets, 1)}


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Train one run to `cfg.steps` (or early stop) and return its result record.

    `resume` continues the run in `cfg.run_dir` from its checkpoint; `overwrite` deletes what the run
    directory holds and starts over. The run directory is locked for the whole run (fpt.utils.hold_folder).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one of torchrun's processes: the same steps, data-parallel
        from fpt.distributed import train_data_parallel

        return train_data_parallel(cfg, resume=resume, overwrite=overwrite, progress=progress)
    with contextlib.ExitStack() as held:  # the run directory's lock, released however we leave
        run_dir = prepare_run_dir(cfg, resume=resume, overwrite=overwrite, held=held)
        ckpt = None
        if resume:  # a corrupt checkpoint or a differing config fails before anything is built
            ckpt, cfg = resume_point(cfg, run_dir)
        exp = build_experiment(cfg)  # before any file is written: bad input leaves nothing behind
        return run(exp, run_dir, ckpt, progress=progress)


def run(exp: Experiment, run_dir: Path, ckpt: dict | None = None, *, progress: bool = True,
        processes: OneProcess = ONE_PROCESS) -> dict:
    """Train the built `exp` in `run_dir` (`ckpt`: the checkpoint a resumed run continues) and return the
    result record: optimizer and state, the loop (validating and checkpointing every eval_every steps, the
    best-validation weights kept beside the last), then test, once, on the best-validation weights."""
    cfg, model, device = exp.cfg, exp.model, exp.device  # cfg's precision resolved (auto -> fp32 or bf16)
    if processes.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        keep_freed_cpu_memory()
    optimizer = make_optimizer(exp)
    gen = torch.Generator().manual_seed(cfg.seed)  # draws training batches
    weights_sha = exp.weights_sha256()
    data_sha = exp.data_sha256()
    counts = summarize_counts(count_parameters(model))
    state = {"step": 0, "elapsed": 0.0, "best_val": -1.0, "best_step": 0, "last": None, "best": None,
             "run_loss": 0.0, "run_correct": 0, "run_targets": 0}
    best_weights = None  # the trainable tensors at the best validation accuracy so far (CPU copies)

    if ckpt is not None:
        if ckpt["weights_sha256"] != weights_sha:
            raise processes.error("cannot resume: the frozen backbone weights differ from the checkpoint's")
        if ckpt.get("data_sha256", data_sha) != data_sha:
            raise processes.error(f"cannot resume: the task's data differ from the data the run trained on "
                                  f"(data_sha256); restore them, or {START_OVER}")
        try:
            model.load_state_dict(ckpt["trainable"], strict=False)
            optimizer.load_state_dict(ckpt["optimizer"])
            set_rng_state(ckpt["rng"], gen)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise processes.error(f"cannot resume: {run_dir / CHECKPOINT} does not fit this model "
                                  f"({type(e).__name__}); {START_OVER}") from None
        state.update({k: v for k, v in ckpt["state"].items() if k in state})
        best_weights = (ckpt.get("best") or {}).get("trainable")
        if processes.is_main:
            _truncate_metrics(run_dir / METRICS, state["step"])
    processes.start_streams(cfg.seed, state["step"], (ckpt or {}).get("rank_rng"))
    if processes.is_main:
        save_yaml(cfg, run_dir / "config.yaml")
        if exp.data.encoding:  # a task file's vocabulary or classes and sizes, for `fpt predict`
            write_json_atomic(run_dir / TASK, exp.data.encoding)

    bar = _Progress(cfg.steps, state["step"], progress and processes.is_main)
    bar.write(f"fpt: {cfg.task} on {describe_body(exp)}, training {','.join(trained_groups(counts))}: "
              f"{counts['trainable_params']:,} of {counts['total_params']:,} parameters "
              f"({counts['trainable_pct']:.3f}%) on {device_name(device)}{processes.describe()}, "
              f"{_describe_precision(exp.precision_info)} -> {run_dir}")
    if exp.cfg.tensorboard and processes.is_main:
        # events after the checkpoint's step are dropped on a resume; the checkpoint's own record stays
        exp.tensorboard = exp.tensorboard or ScalarLog(run_dir, purge_step=state["step"] + 1)
    model.train()
    started = time.perf_counter() - state["elapsed"]
    status = "finished"
    try:
        while state["step"] < cfg.steps:
            batch, loss, correct = scheduled_step(exp, optimizer, gen, state["step"])
            if not torch.isfinite(loss):
                status = "diverged"
                break
            state["step"] += 1
            state["run_loss"] += loss.item() * batch.y.numel()
            state["run_correct"] += int(correct)
            state["run_targets"] += batch.y.numel()
            bar.update(1, loss=f"{loss.item():.4f}")
            if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
                record = _evaluate_and_log(exp, state, run_dir, started, processes)
                if record["step"] == state["best_step"]:  # a new best: its weights are kept
                    best_weights = trainable_weights(model)
                bar.write(f"step {record['step']:>7}  loss {record['train_loss']:.4f}  "
                          f"train {record['train_accuracy']:.4f}  val {record['val_accuracy']:.4f}"
                          f"{'  (best)' if record['step'] == state['best_step'] else ''}  "
                          f"({record['elapsed_s']:.0f}s)")
                bar.progress_line(record)
                rank_rng = processes.stream_states()  # data-parallel: every process's dropout RNG
                if processes.is_main:  # the unwrapped model's names: resumable at any world size
                    save_checkpoint({"config": cfg.to_dict(), "weights_sha256": weights_sha, "data_sha256": data_sha,
                                     "trainable": trainable_weights(model),
                                     "best": {"step": state["best_step"], "trainable": best_weights},
                                     "optimizer": optimizer.state_dict(), "rng": rng_state(gen),
                                     "rank_rng": rank_rng, "state": dict(state)}, run_dir / CHECKPOINT)
                if cfg.early_stop is not None and (record["val_accuracy"] or 0) >= cfg.early_stop:
                    status = "early_stopped"
                    break
    except (OSError, WriteFailed) as e:  # disk full, quota: metrics.jsonl or the checkpoint (rank 0 writes)
        raise FPTError(_write_failure(e, run_dir, state["step"])) from None
    finally:
        bar.close()

    test = None
    if best_weights is not None:  # test, once, on the weights the run reports (the best validation step)
        last = trainable_weights(model)
        model.load_state_dict(best_weights, strict=False)
        test = evaluate(exp, "test", processes)
        model.load_state_dict(last, strict=False)
    result = _result(exp, state, counts, weights_sha, data_sha, status, time.perf_counter() - started,
                     run_dir, test)
    if exp.tensorboard is not None:  # the run's hyperparameters beside its reported figures
        exp.tensorboard.write_hparams(cfg.to_dict(), {k: result[k] for k in ("test_accuracy", "best_val_accuracy",
                                                                             "train_accuracy_at_best")
                                                      if isinstance(result.get(k), (int, float))})
    if cfg.export_backbone and status != "diverged" and processes.is_main:
        result["exported_backbone"] = export_backbone(exp, cfg.export_backbone)
    if processes.is_main:
        try:
            write_json_atomic(run_dir / RESULT, result)
        except WriteFailed as e:
            raise FPTError(_write_failure(e, run_dir, state["step"])) from None
    processes.barrier()  # every process returns (or raises) once the first has written the result
    if status == "diverged":
        good = (f"test accuracy {result['test_accuracy']:.4f} at its best validation step {state['best_step']}"
                if test is not None else "no evaluation before it")
        raise processes.error(f"run diverged at step {state['step'] + 1} (non-finite loss); {good}; "
                              f"recorded in {run_dir / RESULT}")
    return result


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable tensors, under the eager model's names."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def trained_groups(counts: dict) -> list[str]:
    """The groups that exist in this model and train (`--train all` on the LSTM: input, output, recurrent)."""
    return [g for g, c in counts["groups"].items() if c["trainable"]]


def describe_body(exp: Experiment) -> str:
    """What ran as the body, in words: 'minilm (pretrained)', 'LSTM 3 x 768 (random init)'."""
    if exp.backbone is None:
        a = _architecture(exp)
        return f"{a['kind'].removesuffix('Body')} {a['layers']} x {a['width']} (random init)"
    return f"{exp.cfg.backbone} ({exp.cfg.init}{' init' if exp.cfg.init == 'random' else ''})"


def _evaluate_and_log(exp: Experiment, state: dict, run_dir: Path, started: float, processes: OneProcess) -> dict:
    """Validation only (test is measured once, at the end): a task without a val split is scored on its
    training accuracy since the last evaluation, and its last weights are the ones reported."""
    val = evaluate(exp, "val", processes) if "val" in exp.data.splits else None
    # each process summed its own batches since the last evaluation
    loss_sum, right, count = processes.sum(state["run_loss"], state["run_correct"], state["run_targets"])
    state.update(run_loss=loss_sum, run_correct=round(right), run_targets=round(count))
    targets = max(state["run_targets"], 1)
    record = {"step": state["step"], "train_loss": state["run_loss"] / targets,
              "train_accuracy": state["run_correct"] / targets,
              "val_accuracy": val["accuracy"] if val else None, "val_loss": val["loss"] if val else None,
              "lr": exp.cfg.lr_at(max(state["step"] - 1, 0)),
              "elapsed_s": round(time.perf_counter() - started, 3)}
    state.update(run_loss=0.0, run_correct=0, run_targets=0, last=record, elapsed=record["elapsed_s"])
    if val is None or record["val_accuracy"] > state["best_val"]:
        state.update(best_val=record["val_accuracy"] if val else -1.0, best_step=record["step"], best=record)
    if processes.is_main:
        with open(run_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if exp.tensorboard is not None:  # the same scalars as TensorBoard events (fpt/tblog.py)
            exp.tensorboard.write(record)
    return record


def _duration(seconds: float) -> str:
    """'1h02m', '4m05s', '12s'."""
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class _Progress:
    """A tqdm bar on stderr; where stderr is not a terminal (a log file, CI), plain lines with the percentage
    done, the rate and the time left: one at each evaluation, and one every 30 s between them."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, file=sys.stderr, dynamic_ncols=True,
                            mininterval=1.0, disable=None, leave=False)
        self.enabled = enabled
        self.total, self.step, self.first_step = total, initial, initial
        self.started = self.last_line = time.perf_counter()
        self.postfix: dict = {}

    @property
    def plain(self) -> bool:
        return self.enabled and (self.bar is None or self.bar.disable)

    def _line(self, extra: str = "") -> str:
        elapsed = time.perf_counter() - self.started
        rate = (self.step - self.first_step) / elapsed if elapsed > 0 else 0.0
        eta = f"  ETA {_duration((self.total - self.step) / rate)}" if rate > 0 else ""
        return (f"step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%){extra}"
                f"  {rate:.2f} steps/s{eta}")

    def update(self, n: int, **postfix):
        self.step += n
        self.postfix = postfix
        if self.bar is not None and not self.bar.disable:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif self.enabled:
            now = time.perf_counter()
            if now - self.last_line >= 30:
                print(self._line("  " + " ".join(f"{k} {v}" for k, v in postfix.items())), file=sys.stderr,
                      flush=True)
                self.last_line = now

    def progress_line(self, record: dict) -> None:
        """At an evaluation, in a log file: where the run stands and how long it has left."""
        if self.plain:
            print(self._line(), file=sys.stderr, flush=True)
            self.last_line = time.perf_counter()

    def write(self, line: str):
        if not self.enabled:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def prepare_run_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool, held: contextlib.ExitStack) -> Path:
    """Own the run directory (its lock, held until `held` closes) and check that it fits the request:
    --resume needs a checkpoint, --overwrite empties it, a new run needs it free of another run."""
    run_dir = cfg.resolved_run_dir
    if resume and overwrite:
        raise FPTError("--resume continues a run and --overwrite starts it over: give one of them")
    held.enter_context(hold_folder(run_dir, what="run directory", hint="or choose another --run-dir"))
    if resume:
        if not (run_dir / CHECKPOINT).exists():
            stopped = (f" (the run stopped before its first checkpoint: {START_OVER})"
                       if (run_dir / METRICS).exists() else "")
            raise FPTError(f"cannot resume: no checkpoint at {run_dir / CHECKPOINT}{stopped}")
        return run_dir
    if overwrite:
        events = sorted(p.name for p in run_dir.glob("events.out.tfevents.*"))  # --tensorboard's
        for name in (*RUN_FILES, *events):
            try:
                (run_dir / name).unlink(missing_ok=True)
            except OSError as e:
                raise FPTError(f"--overwrite cannot delete {run_dir / name}: {e.strerror or e}") from None
        return run_dir
    if (run_dir / CHECKPOINT).exists() or (run_dir / RESULT).exists():
        raise FPTError(f"run directory {run_dir} already holds a run; pass --resume to continue it, --overwrite "
                       f"to start it over, or --run-dir for a new one (nothing was overwritten)")
    if (run_dir / METRICS).exists():
        raise FPTError(f"run directory {run_dir} already holds a run that stopped before its first checkpoint "
                       f"({METRICS} only); {START_OVER}")
    return run_dir


def resume_point(cfg: TrainConfig, run_dir: Path) -> tuple[dict, TrainConfig]:
    """(the run's checkpoint, `cfg` at the precision the run resolved when it started); one line when the
    checkpoint cannot be read or the config differs from the run's (`_check_resumable`)."""
    ckpt = _load_checkpoint(run_dir)
    if cfg.precision == "auto":
        cfg = cfg.replace(precision=ckpt["config"].get("precision", "auto"))
    _check_resumable(ckpt["config"], cfg)
    return ckpt, cfg


def _load_checkpoint(run_dir: Path) -> dict:
    """The run's checkpoint; one line when it is missing here, unreadable, or not fpt's."""
    path = run_dir / CHECKPOINT
    if not path.exists():  # rank 0 found it: this process runs on another machine
        raise FPTError(f"cannot read {path}: processes on several machines need --run-dir on shared storage")
    return read_checkpoint(path, CHECKPOINT_KEYS, prefix="cannot resume: ", suffix=f"; {START_OVER}")


def _check_resumable(saved: dict, cfg: TrainConfig) -> None:
    """A resumed run continues the saved one: the same config, but for keys that change nothing already
    computed (RESUMABLE_CHANGES); `steps` only grows, and stays fixed under a decaying learning rate."""
    now = cfg.to_dict()
    # a decaying learning rate is scheduled over `steps`: changing it would change the rates already used
    free = RESUMABLE_CHANGES - ({"steps"} if now["lr_schedule"] != "constant" else set())
    # saved.get(k, default): a checkpoint written before a key existed had that key's default
    defaults = TrainConfig().to_dict()
    was = {k: saved.get(k, defaults.get(k)) for k in now}
    changed = sorted(k for k in now if k not in free and was[k] != now[k]
                     and not (k == "precision" and now[k] == "auto"))  # auto: whatever the run resolved
    if changed:
        diffs = "; ".join(f"{k} {now[k]!r} here, {was[k]!r} in the run" for k in changed)
        raise FPTError(f"cannot resume: the config differs from the checkpoint's: {diffs} (drop those flags: "
                       f"--resume reads the run's config.yaml)")
    if now["steps"] < was["steps"]:
        raise FPTError(f"cannot resume: steps {now['steps']} is below the run's {was['steps']} (steps can only grow)")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from (a kill between the two), and a torn last
    line (a kill or a full disk in the middle of writing it)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    keep = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            record_step = record["step"]
        except (ValueError, KeyError, TypeError):
            if i == len(lines) - 1:
                break  # torn: the record of an evaluation the checkpoint does not cover anyway
            raise FPTError(f"cannot resume: {path} line {i + 1} is not a metrics record; {START_OVER}") from None
        if record_step <= step:
            keep.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def _write_failure(e: Exception, run_dir: Path, step: int) -> str:
    """One line for a write that failed mid-run (disk full, quota), saying how to go on."""
    what = str(e) if isinstance(e, WriteFailed) else f"cannot write {e.filename or run_dir}: {e.strerror or e}"
    if (run_dir / CHECKPOINT).exists():
        return f"{what}; the run stopped at step {step}, its last checkpoint is intact: make room, then --resume"
    return f"{what}; the run stopped at step {step} before its first checkpoint: make room, then {START_OVER}"


def _result(exp: Experiment, state: dict, counts: dict, weights_sha: str, data_sha: str, status: str,
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
        "architecture": _architecture(exp),
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


def _architecture(exp: Experiment) -> dict:
    """What the body is: its kind, depth, width and heads (the table's notes cite it)."""
    if exp.backbone is None:
        body = exp.model.body
        return {"kind": type(body).__name__, "layers": len(getattr(body, "lstms", [])), "width": exp.model.width}
    config = exp.backbone.model.config
    return {"kind": config.model_type, "layers": exp.backbone.num_layers, "width": exp.backbone.width,
            "heads": getattr(config, "num_attention_heads", None), "norm": exp.backbone.arch.norm_position}


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


def result_is_finite(result: dict) -> bool:
    acc = result.get("test_accuracy")
    return acc is not None and math.isfinite(acc)


class _CallableModule(types.ModuleType):
    """`fpt.train(cfg)` from the package: once this module is imported, `fpt.train` names the module (the
    import system sets it on the package) and no longer the function; calling the module calls train()."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
