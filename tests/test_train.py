"""The training loop: learning end to end, result files, resume equivalence, divergence."""
import json
import math
import subprocess
import sys
import time

import pytest

from fpt.core.config import TrainConfig
from fpt.core.errors import FPTError
from fpt.run.launch import train


def _cfg(backbone, tmp_path, **kw):
    base = dict(task="bit-xor", backbone=backbone, init="pretrained", steps=8, batch_size=8, eval_every=4,
                run_dir=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})


def test_tiny_random_gpt2_learns_bit_xor(tiny_backbones, tmp_path):
    """A random-weight GPT-2 saved to a folder and loaded back learns Bit XOR with FPT's groups."""
    cfg = _cfg(tiny_backbones["gpt2"], tmp_path, steps=600, batch_size=32, eval_every=100, lr=3e-3,
               early_stop=1.0)
    result = train(cfg, progress=False)
    assert result["test_accuracy"] == 1.0
    assert result["backbone_source"] == tiny_backbones["gpt2"]


def test_result_and_metrics_files(tiny_backbones, tmp_path):
    result = train(_cfg(tiny_backbones["bert"], tmp_path), progress=False)
    run = tmp_path / "run"
    assert json.loads((run / "result.json").read_text()) == result
    for key in ("task", "backbone", "init", "train", "trainable_params", "total_params", "steps", "seed",
                "wall_time_s", "train_accuracy", "test_accuracy"):
        assert result[key] is not None, key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8]
    assert (run / "config.yaml").exists() and (run / "checkpoint.pt").exists()


@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_resume_matches_uninterrupted(tiny_backbones, tmp_path, init):
    full = train(_cfg(tiny_backbones["gpt2"], tmp_path / "a", steps=12, init=init), progress=False)
    # the same run stopped after its step-4 checkpoint, then resumed to the end
    half_cfg = _cfg(tiny_backbones["gpt2"], tmp_path / "b", steps=4, init=init)
    train(half_cfg, progress=False)
    resumed = train(half_cfg.replace(steps=12), resume=True, progress=False)
    for key in ("test_accuracy", "test_loss", "train_loss", "val_accuracy", "steps"):
        assert resumed[key] == full[key], key


def test_killed_run_resumes_to_same_result(tiny_backbones, tmp_path):
    """A real kill (SIGKILL mid-run) and `fpt train --resume` give the uninterrupted numbers."""
    args = ["--task", "bit-xor", "--backbone", tiny_backbones["bert"], "--steps", "400", "--eval-every", "10",
            "--batch-size", "8", "--quiet"]
    cli = [sys.executable, "-m", "fpt", "train"]
    full = json.loads(subprocess.run(cli + args + ["--run-dir", str(tmp_path / "a")], check=True,
                                     capture_output=True, text=True).stdout.splitlines()[-1])
    run_b = tmp_path / "b"
    proc = subprocess.Popen(cli + args + ["--run-dir", str(run_b)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_b / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    assert not (run_b / "result.json").exists(), "the run finished before it could be killed"
    out = subprocess.run(cli + args + ["--run-dir", str(run_b), "--resume"], check=True, capture_output=True,
                         text=True).stdout.splitlines()[-1]
    resumed = json.loads(out)
    assert (resumed["test_accuracy"], resumed["test_loss"]) == (full["test_accuracy"], full["test_loss"])


def test_existing_run_is_not_overwritten(tiny_backbones, tmp_path):
    cfg = _cfg(tiny_backbones["bert"], tmp_path)
    train(cfg, progress=False)
    before = (tmp_path / "run" / "result.json").read_text()
    with pytest.raises(FPTError, match="already holds a run"):
        train(cfg, progress=False)
    assert (tmp_path / "run" / "result.json").read_text() == before


def test_resume_without_checkpoint_fails(tiny_backbones, tmp_path):
    with pytest.raises(FPTError, match="no checkpoint"):
        train(_cfg(tiny_backbones["bert"], tmp_path), resume=True, progress=False)


def test_divergence_is_recorded(tiny_backbones, tmp_path):
    cfg = _cfg(tiny_backbones["bert"], tmp_path, lr=1e30, train="all", grad_clip=0.0, steps=50, eval_every=1)
    with pytest.raises(FPTError, match="diverged"):
        train(cfg, progress=False)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "diverged"


def test_same_seed_same_numbers(tiny_backbones, tmp_path):
    a = train(_cfg(tiny_backbones["bert"], tmp_path / "a"), progress=False)
    b = train(_cfg(tiny_backbones["bert"], tmp_path / "b"), progress=False)
    c = train(_cfg(tiny_backbones["bert"], tmp_path / "c", seed=1), progress=False)
    assert a["test_loss"] == b["test_loss"]
    assert a["test_loss"] != c["test_loss"]


def test_bf16_stores_the_frozen_body_in_bf16_and_still_learns(tiny_backbones, tmp_path):
    """bf16 runs keep frozen linear weights in bf16 (no per-call casts), trainable weights and Adam state
    in fp32, and hash the body as the fp32 run does."""
    import torch

    from fpt.run.experiment import build_experiment
    from fpt.run.step import train_step

    cfg = _cfg(tiny_backbones["gpt2"], tmp_path, precision="bf16", batch_size=32, lr=3e-3)
    exp = build_experiment(cfg)
    frozen = {p.dtype for p in exp.model.body.parameters() if not p.requires_grad and p.dim() == 2}
    assert torch.bfloat16 in frozen
    assert all(p.dtype == torch.float32 for p in exp.trainable)
    fp32 = build_experiment(TrainConfig(**{**cfg.to_dict(), "precision": "fp32"}))
    assert exp.weights_sha256() == fp32.weights_sha256()
    opt = torch.optim.Adam(exp.trainable, lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    losses = [train_step(exp, opt, exp.data.train_batch(32, gen))[0].item() for _ in range(60)]
    assert sum(losses[-10:]) < sum(losses[:10])  # it learns
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())


@pytest.mark.cpp_compiler
def test_compile_option_matches_eager(tiny_backbones, tmp_path):
    """`compile: true` compiles the model in place: same losses (to float tolerance), same checkpoint names,
    and fpt's CPU dropout (hidden and attention) traced whole, not a graph break at every dropout."""
    import torch
    from torch._dynamo.utils import counters

    results = {}
    counters.clear()
    for compiled in (False, True):
        cfg = _cfg(tiny_backbones["bert"], tmp_path / str(compiled), compile=compiled, dropout=0.1, steps=4,
                   eval_every=4)
        results[compiled] = train(cfg, progress=False)
        ckpt = torch.load(tmp_path / str(compiled) / "run" / "checkpoint.pt", weights_only=False)
        assert not any("_orig_mod" in k for k in ckpt["trainable"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    # the same dropout masks, drawn in the same order: same losses
    assert results[True]["test_loss"] == pytest.approx(results[False]["test_loss"], rel=1e-4)


@pytest.mark.cpp_compiler
def test_compile_mode_reaches_torch_compile(tiny_backbones, tmp_path, monkeypatch):
    """`compile_mode` is torch.compile's `mode` (reduce-overhead: CUDA graphs on a GPU); a mode torch does
    not have, or a mode without `compile: true`, is a one-line error before anything is built."""
    import torch

    from fpt.cli import main
    from fpt.run.experiment import build_experiment

    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw.get("mode")))
    build_experiment(_cfg(tiny_backbones["bert"], tmp_path, compile=True, compile_mode="reduce-overhead"))
    build_experiment(_cfg(tiny_backbones["bert"], tmp_path, compile=True))
    assert modes == ["reduce-overhead", "default"]
    with pytest.raises(FPTError, match="unknown compile_mode"):
        _cfg(tiny_backbones["bert"], tmp_path, compile=True, compile_mode="fastest")
    with pytest.raises(FPTError, match=r"needs --compile \(compile: true"):
        _cfg(tiny_backbones["bert"], tmp_path, compile_mode="reduce-overhead")
    assert main(["train", "--task", "bit-xor", "--compile-mode", "fastest", "--run-dir", str(tmp_path / "x")]) != 0
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("device, mode, caches_on", [("cuda", "reduce-overhead", False), ("cuda", "max-autotune", False),
                                                    ("cuda", "default", True), ("cuda", "max-autotune-no-cudagraphs", True),
                                                    ("cpu", "reduce-overhead", True)])
def test_cuda_graphs_compile_without_inductor_caches(device, mode, caches_on, monkeypatch):
    """With CUDA graphs a step loaded from inductor's caches ran 5x slower than one compiled fresh (H100,
    docs/performance.md): those modes on a GPU turn the caches off; every other compile keeps them."""
    import torch
    import torch._functorch.config
    import torch._inductor.config

    from fpt.run.experiment import compile_model

    monkeypatch.setattr("fpt.run.experiment._check_cpu_compiler", lambda: None)
    modes = []
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(model, "compile", lambda **kw: modes.append(kw.get("mode")))
    # torch's config modules restore their own settings on leaving `patch`
    with torch._inductor.config.patch(fx_graph_cache=True), torch._functorch.config.patch(enable_autograd_cache=True):
        compile_model(model, mode, torch.device(device))
        assert modes == [mode]
        assert torch._inductor.config.fx_graph_cache is caches_on
        assert torch._functorch.config.enable_autograd_cache is caches_on


def test_compile_without_a_cpp_compiler_is_a_clear_error(tiny_backbones, tmp_path):
    """torch.compile on the CPU writes C++: with no compiler the run stops before it starts, in one line."""
    import torch._inductor.config

    from fpt.cli import main

    # NOTE: torch's own `patch`, not monkeypatch: monkeypatch reads a config class's __dict__, finds no
    # `cxx` there, and on undo deletes the setting for every later test in the process
    compilers = torch._inductor.config.cpp.cxx
    with torch._inductor.config.patch({"cpp.cxx": ("fpt-no-such-compiler++",)}):
        with pytest.raises(FPTError, match="needs a C.. compiler"):
            train(_cfg(tiny_backbones["bert"], tmp_path, compile=True), progress=False)
        assert main(["train", "--task", "bit-xor", "--backbone", tiny_backbones["bert"], "--compile",
                     "--steps", "2", "--run-dir", str(tmp_path / "cli")]) != 0
    assert torch._inductor.config.cpp.cxx == compilers


def test_lr_schedules():
    cfg = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, lr_schedule="cosine")
    rates = [cfg.lr_at(s) for s in range(110)]
    assert rates[:10] == pytest.approx([1e-3 * (s + 1) / 11 for s in range(10)])  # warm-up
    assert rates[10] == pytest.approx(1e-3) and rates[60] == pytest.approx(5e-4)
    assert rates[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))  # decays monotonically
    linear = cfg.replace(lr_schedule="linear")
    assert linear.lr_at(60) == pytest.approx(5e-4) and linear.lr_at(109) == pytest.approx(1e-5)
    assert {TrainConfig(steps=5).lr_at(s) for s in range(5)} == {1e-3}  # the paper's constant rate
    with pytest.raises(FPTError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(FPTError, match="warmup_steps"):
        TrainConfig(steps=10, warmup_steps=10)


def test_decaying_schedule_cannot_resume_with_other_steps(tiny_backbones, tmp_path):
    cfg = _cfg(tiny_backbones["bert"], tmp_path, steps=4, lr_schedule="cosine")
    train(cfg, progress=False)
    with pytest.raises(FPTError, match="steps"):
        train(cfg.replace(steps=8), resume=True, progress=False)


def test_cpu_training_keeps_freed_memory_in_the_heap(monkeypatch, tiny_backbones, tmp_path):
    """CPU training sets glibc's malloc to keep freed blocks (no page faults for each step's activations),
    on Linux with glibc; FPT_MALLOC=default leaves malloc alone."""
    import platform

    from fpt.core import host as utils

    calls = []
    monkeypatch.setattr("fpt.run.loop.keep_freed_cpu_memory", lambda: calls.append(1))
    train(TrainConfig(task="bit-xor", backbone=tiny_backbones["gpt2"], init="random", steps=2, eval_every=2,
                      device="cpu", run_dir=str(tmp_path / "run")), progress=False)
    assert calls == [1]
    utils.keep_freed_cpu_memory.cache_clear()
    monkeypatch.setenv("FPT_MALLOC", "default")
    assert utils.keep_freed_cpu_memory() is False
    monkeypatch.delenv("FPT_MALLOC")
    utils.keep_freed_cpu_memory.cache_clear()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert utils.keep_freed_cpu_memory() is True


def test_fpt_train_is_the_public_function(tiny_backbones, tmp_path):
    """`fpt.train(cfg)` as the README and the package docstring show it: a function, not a module (the loop
    lives in fpt/run/, so no callable-module trick is needed)."""
    import types

    import fpt
    import fpt.run.loop  # noqa: F401  (importing the loop changes nothing at the front door)
    from fpt.run.step import evaluate

    assert isinstance(fpt.train, types.FunctionType)
    result = fpt.train(fpt.TrainConfig(task="bit-xor", backbone=tiny_backbones["gpt2"], steps=2, eval_every=2,
                                       run_dir=str(tmp_path / "run")), progress=False)
    assert result["steps"] == 2 and (tmp_path / "run" / "result.json").exists()
    assert fpt.evaluate is evaluate
