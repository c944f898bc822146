"""Data-parallel training with PyTorch DDP: `torchrun -m fpt train ...` or `fpt train --nproc N`.

Every process runs the same `fpt.train` (fpt/run/launch.py), which hands over to `train_data_parallel` here: the
single-process steps, each checked on every rank, with the built Experiment made data-parallel
(`data_parallel`) and this process's `Ranks` for fpt/run/step.py's `OneProcess` hooks.

- Process group: gloo on the CPU, NCCL on GPUs (process LOCAL_RANK on cuda:LOCAL_RANK), from the
  WORLD_SIZE / RANK / LOCAL_RANK variables torchrun sets. Without them: one process, nothing changes.
- Batches: every rank draws the SAME global batch from the same seeded generator (so the data stream
  is exactly one process's) and keeps its contiguous slice, rows [rank*B/W, (rank+1)*B/W). Each rank's
  loss is the mean over its slice; DDP averages the gradients, which is the global batch's mean
  gradient because the slices are the same size (batch_size must divide by the world size) and every
  example has the same number of targets. Same seed and global batch: the same run as one process,
  up to floating-point summation order.
- Gradients: DDP all-reduces only parameters with requires_grad, i.e. only the trainable groups;
  the frozen body is never communicated after DDP's one broadcast of the initial weights.
- Dropout: rank 0 keeps one process's dropout stream, rank r > 0 draws its own (seeded from seed,
  rank and step). Dropout noise therefore differs across world sizes, as on any data-parallel
  framework; with --dropout 0 a run matches one process to floating-point tolerance.
- Evaluation: rank r evaluates batches r, r+W, r+2W, ... of each split; the per-batch sums are
  gathered and added in batch order, so the figures are those of one process with the same weights.
- Files: only rank 0 writes metrics, checkpoints and the result. A checkpoint holds the unwrapped
  model's trainable weights, the optimizer, the global data stream and every rank's dropout stream,
  so a run resumes at the same or a different world size (a new world size reseeds ranks r > 0).
  Processes on several machines need --run-dir on storage they all see.
- Errors: a check that fails on any rank stops every rank; rank 0 prints the one line.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from fpt.core.config import TrainConfig
from fpt.core.errors import FPTError
from fpt.tasks import Batch, TaskData
from fpt.run.experiment import Experiment, build_experiment
from fpt.run.files import prepare_run_dir, resume_point
from fpt.run.loop import run
from fpt.run.step import OneProcess

# NOTE: a float32 cross-entropy can overflow to inf from finite logits beyond about 1e38; flagging
# logits this large as non-finite keeps every rank's divergence check in step (see `agree_finite`).
LOGIT_LIMIT = 1e30


def env_rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def _uses_cuda(cfg: TrainConfig) -> bool:
    return cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())


def check_config(cfg: TrainConfig, world_size: int) -> None:
    """What a data-parallel run needs from its config (one line each)."""
    if world_size <= 1:
        return
    if cfg.batch_size % world_size:
        raise FPTError(f"batch_size {cfg.batch_size} does not divide into {world_size} processes: "
                       f"each process takes an equal share of every batch")
    if cfg.cache_features:
        raise FPTError("cache_features is single-process (each process would cache its own features); "
                       "drop --nproc / torchrun for output-only cached runs")
    if cfg.device.startswith("cuda:"):
        raise FPTError(f"--device {cfg.device} names one GPU, but each of the {world_size} processes "
                       f"takes its own (cuda:LOCAL_RANK): use --device cuda")


def check_nproc(cfg: TrainConfig, nproc: int) -> None:
    """`fpt train --nproc N`: one process per GPU, or per CPU core on the CPU."""
    if nproc < 1:
        raise FPTError(f"--nproc must be at least 1, got {nproc}")
    if "WORLD_SIZE" in os.environ:
        raise FPTError("--nproc launches torchrun itself; under torchrun leave it out")
    if _uses_cuda(cfg):
        if not torch.cuda.is_available():
            raise FPTError(f"--device {cfg.device} asked for, but CUDA is not available here; use --device cpu")
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise FPTError(f"--nproc {nproc} is more than the {gpus} CUDA device(s) here: one process per GPU")
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if nproc > cores:
            raise FPTError(f"--nproc {nproc} is more than the {cores} CPU core(s) here: one process per "
                           f"core at most on the CPU (gloo)")
    check_config(cfg, nproc)


def launch(argv: list[str], nproc: int) -> int:
    """Run `python -m fpt ARGV` in `nproc` processes with torchrun's launcher (torch.distributed.run)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))  # torchrun's default is 1, with a banner
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "fpt", *argv])
    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)  # the workers print their own errors; no launcher report on top
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode == 2:  # an FPTError: rank 0 printed its line
            return 2
        raise FPTError(f"training process of rank {rank} failed with exit code {failure.exitcode}"
                       f"{' (a signal)' if failure.exitcode < 0 else ''}; see the output above") from None
    finally:
        elastic.setLevel(level)
    return 0


class ShardedData:
    """A TaskData whose training batches are this rank's slice of the global batch; the rest as is."""

    def __init__(self, data: TaskData, ranks: "Ranks"):
        self._data, self._ranks = data, ranks

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._ranks.shard(self._data.train_batch(batch_size, generator))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)


@dataclass
class Ranks(OneProcess):
    """This process's place among the data-parallel processes, and fpt/run/step.py's `OneProcess` hooks for it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives run
    owns_group: bool = False  # this run initialised the process group, and tears it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f" x {self.world_size} processes (DDP, {torch.distributed.get_backend()})" if self.enabled else ""

    def error(self, message: str) -> FPTError:
        """The FPTError every rank raises together; rank 0 prints it first.

        NOTE: torchrun stops the other workers as soon as one exits, so rank 0 prints (and has
        written its files) before the barrier that lets any rank leave; the CLI prints nothing more.
        """
        err = FPTError(message)
        if self.enabled:
            if self.is_main:
                print(f"fpt: error: {message}", file=sys.stderr, flush=True)
            torch.distributed.barrier()
            err.quiet = True
        return err

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def evaluates(self, batch_index: int) -> bool:
        return batch_index % self.world_size == self.rank  # rank r takes batches r, r+W, r+2W, ...

    def agree(self, fn: Callable[[], Any], *, main_only: bool = False) -> Any:
        """fn() on every rank (or on rank 0, whose value every rank gets); an FPTError anywhere stops all."""
        if not self.enabled:
            return fn()
        value, error = None, None
        if self.is_main or not main_only:
            try:
                value = fn()
            except FPTError as e:
                error = str(e)
        if main_only:
            box = [error, value]
            torch.distributed.broadcast_object_list(box, src=0)
            error, value = box
            errors = [error]
        else:
            errors = self.gather(error)
        for r, e in enumerate(errors):
            if e is not None:
                raise self.error(e if r == 0 or main_only else f"rank {r}: {e}")
        return value

    def gather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, *values: float) -> list[float]:
        """Each value summed over ranks (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def shard(self, batch: Batch) -> Batch:
        """Rows [rank*B/W, (rank+1)*B/W) of the global batch."""
        if not self.enabled:
            return batch
        n = len(batch) // self.world_size
        rows = slice(self.rank * n, (self.rank + 1) * n)
        return Batch(batch.x[rows], batch.y[rows], None if batch.lengths is None else batch.lengths[rows])

    def agree_finite(self, logits: torch.Tensor) -> torch.Tensor:
        """NaN logits on every rank when any rank's are not finite, so all ranks stop at the same step."""
        bad = not bool(torch.isfinite(logits).all()) or float(logits.detach().abs().max()) > LOGIT_LIMIT
        if self.sum(float(bad))[0] > 0:
            return logits + float("nan")
        return logits

    def stream_states(self) -> list[dict] | None:
        """Every rank's dropout RNG state, for the checkpoint (None in one process)."""
        if not self.enabled:
            return None
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return self.gather(state)

    def start_streams(self, seed: int, step: int, saved: list[dict] | None) -> None:
        """Rank r > 0: its own dropout stream, restored from the checkpoint at the same world size."""
        if not self.enabled or self.is_main:
            return  # rank 0 continues one process's stream
        if saved is not None and len(saved) == self.world_size:
            torch.set_rng_state(saved[self.rank]["cpu"])
            if "cuda" in saved[self.rank] and self.device.type == "cuda":
                torch.cuda.set_rng_state(saved[self.rank]["cuda"], self.device)
        else:
            torch.manual_seed(((seed * 1_000_003 + self.rank) * 1_000_003 + step) % 2**63)

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False
            # NOTE: objects in reference cycles (the run's DDP wrapper and what it holds) can keep the
            # gloo group alive past destroy_process_group; torn down at the interpreter's exit, a rank
            # aborted in about 1 run in 10 ("terminate called without an active exception", no Python
            # frame). Collected here, while the interpreter is whole: 0 aborts in 60 runs of the DDP
            # test's command, against 3 in 30 without.
            gc.collect()


@dataclass
class DataParallelExperiment(Experiment):
    """An Experiment whose training batches are this rank's slice and whose training forward runs through DDP."""

    ranks: Ranks | None = None
    ddp: torch.nn.Module | None = None  # `model` in DistributedDataParallel

    def logits(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if torch.is_grad_enabled():  # a training step: gradients all-reduced (no feature cache under DDP)
            return self.ranks.agree_finite(self.ddp(x, lengths))
        return self.model(x, lengths)


def data_parallel(exp: Experiment, ranks: Ranks) -> DataParallelExperiment:
    """`exp` made data-parallel: sharded training batches, the training forward through DDP."""
    from torch.nn.parallel import DistributedDataParallel

    # NOTE: DDP registers gradient hooks only on parameters that require grad: the trainable
    # groups. Buffers never change in these models, so they are not re-broadcast every step.
    ddp = DistributedDataParallel(
        exp.model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None,
        forward_sync_buffers=False, find_unused_parameters=False, gradient_as_bucket_view=True)
    return DataParallelExperiment(**{**vars(exp), "data": ShardedData(exp.data, ranks)}, ranks=ranks, ddp=ddp)


def train_data_parallel(cfg: TrainConfig, *, resume: bool, overwrite: bool, progress: bool) -> dict:
    """`fpt.train` in one of torchrun's processes: its steps, each checked on every rank (an FPTError
    on any stops all; rank 0 prints it), rank 0 owning the run directory, then `run` data-parallel."""
    ranks = setup(cfg)
    try:
        with contextlib.ExitStack() as held:  # rank 0's lock on the run directory, released however we leave
            run_dir: Path = ranks.agree(lambda: prepare_run_dir(cfg, resume=resume, overwrite=overwrite, held=held),
                                        main_only=True)
            ckpt = None
            if resume:
                ckpt, cfg = ranks.agree(lambda: resume_point(cfg, run_dir))
            exp = data_parallel(ranks.agree(lambda: build_experiment(cfg)), ranks)
            return run(exp, run_dir, ckpt, progress=progress, processes=ranks)
    finally:
        ranks.close()


def setup(cfg: TrainConfig) -> Ranks:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if _uses_cuda(cfg):
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local >= gpus:
            err = FPTError(f"process LOCAL_RANK {local} has no GPU ({gpus} CUDA device(s) here): start at most "
                           f"one process per GPU, or use --device cpu")
            err.quiet = rank != 0  # no process group yet: every rank fails alike, rank 0 says it
            raise err
        device, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(device)  # so `--device cuda` / auto builds the model on this rank's GPU
    else:
        device, backend = torch.device("cpu"), "gloo"
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group(backend, device_id=device if backend == "nccl" else None)
    ranks = Ranks(rank=rank, world_size=world, local_rank=local, device=device, owns_group=owns)
    try:
        ranks.agree(lambda: check_config(cfg, world), main_only=True)
    except FPTError:
        ranks.close()
        raise
    return ranks
