"""One optimizer step and one evaluation pass (what `fpt train` runs and `fpt bench` times), and the
points where the processes of a data-parallel run differ (`OneProcess`, each the plain single-process case;
fpt/run/distributed.py's `Ranks` overrides them)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fpt.core.errors import FPTError
from fpt.run.experiment import Experiment
from fpt.tasks import Batch


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
    share, nothing to wait for). fpt/run/distributed.py's `Ranks` overrides every one (`train_data_parallel`)."""

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
