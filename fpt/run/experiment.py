"""An Experiment: everything built from one config before training (task data, body, FPT model, device,
precision), checked to fit in memory, compiled where asked."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fpt.backbones import Backbone
from fpt.models.factory import build_model
from fpt.core.config import CUDA_GRAPH_MODES, TrainConfig
from fpt.core.errors import FPTError
from fpt.models.features import FeatureCache
from fpt.models.model import FPT, store_frozen_matmul_weights
from fpt.models.precision import autocast
from fpt.models.precision import resolve as resolve_precision
from fpt.tasks import TaskData, task_from_config
from fpt.run.tblog import ScalarLog, summary_writer_class
from fpt.core.host import pick_device, seed_everything


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


def describe_precision(info: dict) -> str:
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
