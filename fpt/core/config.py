"""One validated, frozen config for a training run: YAML file, then CLI flags, then code.

Unknown keys and wrong types raise. The resolved config is written beside a
run's outputs (`RUN_DIR/config.yaml`), so every result says how it was made.
CLI flags are generated from the fields below, so a new field is a new flag; each field's
metadata holds its help text and choices, which `--help` shows.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from fpt.core.errors import FPTError
from fpt.core.groups import FPT_GROUPS, LORA_TARGETS, parse_groups
from fpt.core.rows import MODELS

# NOTE: this module sits at the bottom of the import graph (fpt.core.errors, fpt.core.groups, fpt.core.registry): the
# closed sets a config checks are defined here or in fpt/core/groups.py, and the modules above import them.
PRECISIONS = ("auto", "fp32", "bf16")  # fpt/models/precision.py: auto resolves to fp32 or bf16
INITS = ("pretrained", "random", "stats")  # the body's weights (fpt/backbones load_backbone)

# `fpt bench`'s default rows: fpt's loop as `fpt train` runs it at the precision auto picks, and the same
# under `compile: true` (docs/performance.md: on the 2-core CPU the compiled step is the fastest)
BENCH_VARIANTS = ("auto", "auto+compile")
LR_SCHEDULES = ("constant", "cosine", "linear")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # those of COMPILE_MODES that replay CUDA graphs
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Paper defaults unless noted."""

    task: str = field(default="bit-xor", metadata={
        "help": "a registered task (`fpt tasks list`) or your own data as a task file, FILE.yaml "
                "(format image_folder, csv or npz; fpt/tasks/custom/)",
        "choices_from": "tasks"})
    model: str = field(default="fpt", metadata={
        "help": "the model (fpt/models/bodies.py): fpt, a transformer backbone as the body; lstm, the paper's LSTM baseline",
        "choices_from": "models"})
    backbone: str = field(default="minilm", metadata={
        "help": "a registered backbone (`fpt backbones list`) or a local Hugging Face checkpoint folder",
        "choices_from": "backbones"})
    init: str = field(default="pretrained", metadata={
        "help": "the body's weights: pretrained; random (a fresh init); stats (each tensor redrawn from the "
                "mean and std of the pretrained one, the paper's Table 9)",
        "choices": INITS})
    train: tuple[str, ...] | None = field(default=None, metadata={
        "help": "parameter groups that learn, comma-separated: fpt (input, output, positions, layernorm), all, "
                "none, or named groups; unset: the model row's default (fpt: the FPT groups, plus lora when "
                "--lora-r > 0; lstm: all)",
        "choices_from": "groups", "metavar": "GROUPS"})
    layers: int | None = field(default=None, metadata={
        "help": "keep the first N residual blocks (or N LSTM layers); unset: all", "metavar": "N"})
    lora_r: int = field(default=0, metadata={
        "help": "rank of peft LoRA adapters on the frozen body (needs the lora group in --train); 0: none",
        "metavar": "R"})
    lora_targets: tuple[str, ...] = field(default=("attention",), metadata={
        "help": "groups whose linear layers get LoRA adapters, comma-separated",
        "choices_from": "lora_targets", "metavar": "GROUPS"})
    cache_features: bool = field(default=False, metadata={
        "help": "with --train output: compute the body's features once per distinct example and train the "
                "output layer on the cache"})
    export_backbone: str | None = field(default=None, metadata={
        "help": "after training, save the (trained) body to this folder as a Hugging Face checkpoint",
        "metavar": "FOLDER"})
    steps: int = field(default=2000, metadata={"help": "gradient steps", "metavar": "N"})
    batch_size: int = field(default=32, metadata={
        "help": "examples per gradient step, all processes together under --nproc", "metavar": "N"})
    lr: float = field(default=1e-3, metadata={"help": "Adam's learning rate; the peak rate when a schedule is set"})
    # NOTE: the rate is a function of the step alone, so a resumed run continues its schedule exactly
    lr_schedule: str = field(default="constant", metadata={
        "help": "constant (the paper's); cosine or linear: decay from --lr to 0 at --steps, after "
                "--warmup-steps of linear warm-up",
        "choices": LR_SCHEDULES})
    warmup_steps: int = field(default=0, metadata={
        "help": "steps of linear warm-up from 0 to --lr (any schedule)", "metavar": "N"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam's weight decay (L2)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm; 0 disables clipping"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability in the body, in [0, 1)"})
    eval_every: int = field(default=200, metadata={
        "help": "steps between evaluations (and checkpoints)", "metavar": "N"})
    eval_batch_size: int = field(default=256, metadata={"help": "examples per evaluation batch", "metavar": "N"})
    early_stop: float | None = field(default=None, metadata={
        "help": "stop once validation accuracy reaches this (e.g. 1.0); unset: run every step", "metavar": "ACC"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, batches and dropout"})
    device: str = field(default="auto", metadata={
        "help": "auto (a GPU when there is one, else the CPU), cpu, cuda or cuda:N"})
    precision: str = field(default="auto", metadata={
        "help": "auto: bf16 where this device runs bf16 matmuls faster than fp32 (fpt/models/precision.py), else fp32; "
                "bf16 is autocast: parameters and optimizer state stay fp32",
        "choices": PRECISIONS})
    # auto on the CPU is fpt's attention (fpt/fastops: eager math with cheaper dropout, torch's fused
    # kernel from 512 keys when no attention dropout applies)
    attn_implementation: str = field(default="auto", metadata={
        "help": "auto: fpt's attention on the CPU (fpt/fastops), sdpa on GPUs; sdpa: torch's fused kernels; "
                "eager: transformers' own",
        "choices": ATTN_IMPLEMENTATIONS})
    # about 1/7 less work for MiniLM on MNIST
    last_block_at_readout: bool = field(default=True, metadata={
        "help": "compute the last block only at the tokens the output layer reads (fpt/backbones/readout.py; the same "
                "math, less work); off for attention maps of the whole last block"})
    # 7-9% a step at 64 tokens on the 2-core CPU
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the model in place (on the CPU this needs a C++ compiler)"})
    # reduce-overhead on an H200, GPT-2 shape, 64 tokens x 32: 13.9 -> 7.3 ms a step; docs/performance.md
    compile_mode: str = field(default="default", metadata={
        "help": "torch.compile's mode (needs --compile); reduce-overhead replays CUDA graphs, for GPU steps "
                "bound by the host issuing kernels",
        "choices": COMPILE_MODES})
    patch_size: int | None = field(default=None, metadata={
        "help": "values per input token (a patch); unset: the task's default", "metavar": "N"})
    task_options: dict = field(default_factory=dict, metadata={
        "help": "task-specific options as a YAML mapping, e.g. '{n_bits: 10}' (`fpt tasks list` shows each "
                "task's)",
        "metavar": "YAML"})
    data_dir: str | None = field(default=None, metadata={
        "help": "data root; unset: $FPT_DATA, else ./data", "metavar": "FOLDER"})
    run_dir: str | None = field(default=None, metadata={
        "help": "where the run writes its config, checkpoints and results; unset: "
                "runs/<task>-<backbone>-<init>-<groups>-seed<seed> (the model row, its trained groups and LoRA named)",
        "metavar": "FOLDER"})
    tensorboard: bool = field(default=False, metadata={
        "help": "also write metrics.jsonl's scalars as TensorBoard event files in the run directory "
                "(pip install 'fpt[tensorboard]')"})

    def __post_init__(self):
        default_train = MODELS.get(self.model).default_train  # unknown model: one line naming the rows
        if self.train is None:
            default = default_train + (("lora",) if self.lora_r > 0 else ())
            object.__setattr__(self, "train", parse_groups(default))
        else:
            object.__setattr__(self, "train", parse_groups(self.train))
        targets = self.lora_targets.split(",") if isinstance(self.lora_targets, str) else self.lora_targets
        object.__setattr__(self, "lora_targets", tuple(t.strip() for t in targets if t.strip()))
        if not self.lora_targets or not set(self.lora_targets) <= set(LORA_TARGETS):
            raise FPTError(f"lora_targets must be some of {', '.join(LORA_TARGETS)}, got {self.lora_targets}")
        if self.lora_r < 0 or (self.layers is not None and self.layers <= 0):
            raise FPTError("lora_r must be >= 0 and layers positive")
        if self.lora_r > 0 and ("lora" not in self.train or self.model != "fpt"):
            raise FPTError("lora_r > 0 needs --model fpt and the lora group in --train (e.g. --train fpt,lora)")
        if self.cache_features and self.train != ("output",):
            raise FPTError("cache_features needs --train output: cached features are only valid while the "
                           "body and input layer stay frozen")
        if self.export_backbone and (self.model != "fpt" or self.lora_r > 0):
            raise FPTError("export_backbone needs --model fpt without LoRA (a plain Hugging Face body)")
        for f in fields(self):  # the closed sets: the choices `--help` shows are the ones checked
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise FPTError(f"unknown {f.name} {getattr(self, f.name)!r}; choose from: {', '.join(choices)}")
        if self.compile_mode != "default" and not self.compile:
            raise FPTError(f"compile_mode {self.compile_mode!r} needs --compile (compile: true in YAML)")
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise FPTError(f"{name} must be positive, got {getattr(self, name)}")
        # one line per key, naming its value; NaN fails every comparison, so each test holds for good values only
        for name, ok, rule in (("lr", math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
                               ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                                "a finite number >= 0"),
                               ("grad_clip", math.isfinite(self.grad_clip) and self.grad_clip >= 0,
                                "a finite number >= 0 (0 turns clipping off)"),
                               ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
                               ("early_stop", self.early_stop is None or 0 <= self.early_stop <= 1,
                                "a validation accuracy in [0, 1]")):
            if not ok:
                raise FPTError(f"{name} must be {rule}, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps < self.steps:
            raise FPTError(f"warmup_steps must be in [0, steps), got {self.warmup_steps}")
        if self.patch_size is not None and self.patch_size <= 0:
            raise FPTError(f"patch_size must be positive, got {self.patch_size}")

    def lr_at(self, step: int) -> float:
        """The learning rate of gradient step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / (self.warmup_steps + 1)
        if self.lr_schedule == "constant":
            return self.lr
        frac = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)  # 0 -> 1
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * frac))
        return self.lr * (1 - frac)

    @property
    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        return Path("runs") / self.default_run_name

    @property
    def default_run_name(self) -> str:
        """<task>-<body>-<groups>[-lora<r>][-<layers>l]-seed<seed>: one folder per row, so that two rows of
        one task (FPT, then the LSTM) never collide. <body>: backbone and init, or `lstm`; <groups>: `fpt`,
        `all` or the trained groups joined by '+'."""
        task = Path(self.task).stem if self.task.endswith((".yaml", ".yml")) else self.task
        if self.model == "fpt":
            name = Path(self.backbone).name if "/" in self.backbone else self.backbone
            body = f"{name}-{self.init}"
        else:
            body = self.model
        groups = set(self.train) - {"lora"}
        if groups == set(FPT_GROUPS):
            trained = "fpt"
        elif groups >= set(FPT_GROUPS) | {"attention", "feedforward"} or (self.model != "fpt" and groups >= set(
                MODELS.get(self.model).default_train) - {"lora"}):
            trained = "all"
        else:
            trained = "+".join(g for g in self.train if g != "lora") or "none"
        lora = f"-lora{self.lora_r}" if self.lora_r > 0 else ""
        layers = f"-{self.layers}l" if self.layers is not None else ""
        return f"{task}-{body}-{trained}{lora}{layers}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"] = list(self.train)
        d["lora_targets"] = list(self.lora_targets)
        return d

    def replace(self, **changes) -> "TrainConfig":
        return from_dict({**self.to_dict(), **changes})


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check (and, for strings from the CLI, convert) one value against its field's type."""
    hint = typing.get_type_hints(TrainConfig)[name]
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise FPTError(f"config key {name!r} cannot be empty")
    for option in options:
        if option is type(None):
            continue
        base = typing.get_origin(option) or option
        if base is tuple:
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
            if isinstance(value, str):
                return value  # parsed by __post_init__
            continue
        if base is dict:
            if isinstance(value, dict):
                return value
            if isinstance(value, str):
                parsed = yaml.safe_load(value)
                if isinstance(parsed, dict):
                    return parsed
            continue
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            continue
        if isinstance(value, str) and base in (int, float):
            try:
                return base(float(value)) if base is int and float(value).is_integer() else base(value)
            except ValueError:
                continue
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return value
    raise FPTError(f"config key {name!r} expects {getattr(hint, '__name__', hint)}, got {value!r}")


def from_dict(values: dict[str, Any]) -> TrainConfig:
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise FPTError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return TrainConfig(**{k: _coerce(k, v, known[k].type) for k, v in values.items()})


def load_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file's mapping; a missing file, bad YAML or another shape is one line naming `what` it is."""
    p = Path(path)
    if not p.is_file():
        raise FPTError(f"{what} {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise FPTError(f"{what} {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise FPTError(f"{what} {str(p)!r} must hold a mapping of keys to values")
    return data


def resolve(config_file: str | None = None, overrides: dict[str, Any] | None = None, *,
            base: dict[str, Any] | None = None) -> TrainConfig:
    """`base` (a resumed run's config.yaml), then the YAML file (if any), then overrides (CLI flags), into one
    validated config."""
    values = dict(base or {})
    values.update(load_yaml(config_file) if config_file else {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(values)


def save_yaml(cfg: TrainConfig, path: Path) -> None:
    """RUN_DIR/config.yaml, atomically: the config a plain `--resume` continues with."""
    from fpt.core.files import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
