"""`fpt bench`: both loops run and report consistent figures; FLOP counting sees the frozen body."""
from __future__ import annotations

import json

import pytest
import torch

from fpt.bench import bench_fpt, bench_reference, run_bench
from fpt.bench.measure import count_flops
from fpt.cli import main
from fpt.core.config import from_dict
from fpt.run.experiment import build_experiment


def _cfg(folder, tmp_path, **kw):
    return from_dict({"task": "bit-xor", "backbone": folder, "init": "random", "batch_size": 32,
                      "eval_batch_size": 64, "device": "cpu", "run_dir": str(tmp_path / "run"),
                      "task_options": {"eval_examples": 64}, **kw})


def test_frozen_body_skips_weight_gradients(tiny_backbones, tmp_path):
    """FLOPs of a step with the body frozen are well below those with everything training: autograd
    computes no weight gradients for frozen weights (about 1/3 of a full step's matmul FLOPs)."""
    counts = {}
    for train in ("fpt", "all"):
        exp = build_experiment(_cfg(tiny_backbones["gpt2"], tmp_path, train=train))
        batch = exp.data.train_batch(32, torch.Generator().manual_seed(0))

        def step():
            exp.model(batch.x).sum().backward()

        counts[train] = count_flops(step)
    assert counts["fpt"] < 0.8 * counts["all"]


PEAKS = {"fp32": 1e12, "bf16": 1e12}


def _bench_fpt(cfg, **kw):
    return bench_fpt(cfg, peaks=PEAKS, **kw)


def _bench_reference(cfg, **kw):
    return bench_reference(cfg, peak=PEAKS["fp32"], **kw)


@pytest.mark.parametrize("loop", [_bench_fpt, _bench_reference])
def test_loops_report_finite_figures(tiny_backbones, tmp_path, loop):
    fig = loop(_cfg(tiny_backbones["bert"], tmp_path), steps=2, warmup=1, eval_batches=1)
    assert fig.train_steps_per_s > 0 and fig.eval_tokens_per_s > 0 and fig.peak_memory_mb > 0
    assert fig.flops_per_step > 0 and 0 < fig.mfu < 1
    # tokens/s is steps/s times batch x sequence length (bit-xor: 10 tokens)
    assert fig.train_tokens_per_s == pytest.approx(fig.train_steps_per_s * 32 * 10)


def test_reference_counts_the_same_flops_as_fpt_in_fp32(tiny_backbones, tmp_path):
    """Two micro-batches of 16 do the work of one batch of 32: the speedup is not less work (fpt's loop with
    every block in full, as the reference runs them)."""
    cfg = _cfg(tiny_backbones["gpt2"], tmp_path, dropout=0.0, attn_implementation="eager", last_block_at_readout=False)
    ours = _bench_fpt(cfg, steps=1, warmup=0, eval_batches=1)
    ref = _bench_reference(cfg, steps=1, warmup=0, eval_batches=1)
    assert ours.flops_per_step == pytest.approx(ref.flops_per_step, rel=0.02)


def test_reference_is_built_without_fpts_levers(tiny_backbones, tmp_path, monkeypatch):
    """The reference is the paper's loop whatever fpt's loop is given: fp32, eager attention, every
    block in full, no feature cache, not compiled."""
    import fpt.bench.loops

    built = []
    real = fpt.bench.loops.build_experiment
    monkeypatch.setattr(fpt.bench.loops, "build_experiment", lambda cfg: built.append(cfg) or real(cfg))
    cfg = _cfg(tiny_backbones["bert"], tmp_path, precision="bf16", compile=True, compile_mode="reduce-overhead",
               attn_implementation="sdpa")
    bench_reference(cfg, steps=1, warmup=0, eval_batches=1, peak=1e12)
    (ref,) = built
    assert (ref.precision, ref.attn_implementation, ref.compile, ref.compile_mode, ref.cache_features,
            ref.last_block_at_readout) == ("fp32", "eager", False, "default", False, False)


def _bench_command(backbone, out, capsys, *flags) -> tuple[str, dict]:
    """`fpt bench` on tiny Bit XOR: what it printed, and its last line (the JSON result)."""
    code = main(["bench", "--task", "bit-xor", "--backbone", backbone, "--init", "random", "--device", "cpu",
                 "--task-options", "{eval_examples: 32}", "--out", str(out), *flags])
    assert code == 0
    printed = capsys.readouterr().out
    return printed, json.loads(printed.strip().splitlines()[-1])


@pytest.mark.cpp_compiler
def test_bench_command_prints_both_loops_and_the_ratio(tiny_backbones, tmp_path, capsys):
    out = tmp_path / "bench.json"
    printed, result = _bench_command(tiny_backbones["gpt2"], out, capsys,
                                     "--bench-steps", "1", "--warmup", "0", "--eval-batches", "1")
    # the default rows: auto (fp32 in tests: conftest.py), plain and compiled, then the reference
    assert [(loop["name"], loop["compiled"]) for loop in result["loops"]] == [
        ("fpt", False), ("fpt", True), ("reference", False)]
    assert list(result["speedup_train"]) == ["auto=fp32", "auto=fp32+compile"]
    assert "precision auto picked fp32 on this device" in printed
    assert "speedup over the reference loop (auto=fp32+compile)" in printed
    assert json.loads(out.read_text()) == result


def test_default_bench_skips_the_compiled_row_without_a_cpp_compiler(tiny_backbones, tmp_path, capsys, monkeypatch):
    """A CPU without a C++ compiler still runs the default bench (no compiled row, and says why);
    `--precisions bf16+compile` asked for by name is a one-line error there."""
    from torch._inductor import cpp_builder

    def no_compiler():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    printed, result = _bench_command(tiny_backbones["gpt2"], tmp_path / "b.json", capsys, "--no-reference",
                                     "--bench-steps", "1", "--warmup", "0", "--eval-batches", "1")
    assert [loop["compiled"] for loop in result["loops"]] == [False]
    assert "skipping the +compile rows: --compile on the CPU needs a C++ compiler" in printed
    code = main(["bench", "--task", "bit-xor", "--backbone", tiny_backbones["gpt2"], "--init", "random",
                 "--precisions", "bf16+compile", "--no-reference", "--bench-steps", "1", "--warmup", "0"])
    assert code != 0 and "needs a C++ compiler" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["bf17", "bf16+jit", "+compile"])
def test_unknown_bench_variant_is_one_line_before_anything_runs(tiny_backbones, tmp_path, capsys, variant):
    code = main(["bench", "--task", "bit-xor", "--backbone", tiny_backbones["gpt2"], "--init", "random",
                 "--precisions", f"fp32,{variant}", "--out", str(tmp_path / "b.json")])
    printed = capsys.readouterr()
    assert code != 0 and f"unknown bench variant {variant!r}" in printed.err
    assert "device:" not in printed.out  # refused before the peak is timed
    assert not (tmp_path / "b.json").exists()


def test_scaling_grid(tiny_backbones, tmp_path):
    from fpt.bench import run_scaling

    rows = run_scaling(_cfg(tiny_backbones["gpt2"], tmp_path), seq_lens=[8, 32], batch_sizes=[2], steps=1,
                       warmup=0, log=lambda *_: None)
    assert [(r["seq_len"], r["batch_size"]) for r in rows] == [(8, 2), (32, 2)]
    assert rows[1]["flops_per_step"] > 3 * rows[0]["flops_per_step"]  # 4x the tokens


def test_cpu_flash_attention_flops_are_counted():
    """torch's counter knows only the GPU SDPA kernels; fpt registers the CPU one (fpt/fastops uses it)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 64, 16, requires_grad=True) for _ in range(3))
    scores_and_sum = 2 * (2 * 2 * 3 * 64 * 64 * 16)  # (T x d) x (d x T) and (T x T) x (T x d), per head
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)) == scores_and_sum
    # the backward: grads of q, k, v and the weights, plus the scores recomputed (torch's GPU formula)
    total = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward())
    assert total == scores_and_sum + 5 * scores_and_sum // 2


@pytest.mark.parametrize("loop", ["fpt", "reference"])
def test_train_to_accuracy_stops_at_the_target(tiny_backbones, tmp_path, loop):
    from fpt.bench import train_to_accuracy

    cfg = _cfg(tiny_backbones["bert"], tmp_path, steps=6, eval_every=2)
    low = train_to_accuracy(cfg, loop, 0.01, log=lambda _: None)  # any accuracy reaches 1%
    assert low["reached"] and low["steps_to_target"] == 2 and len(low["curve"]) == 1
    assert low["seconds_to_target"] == low["curve"][0]["seconds"] > 0
    high = train_to_accuracy(cfg, loop, 1.0, log=lambda _: None)  # 6 steps do not learn Bit XOR perfectly
    assert not high["reached"] and [p["step"] for p in high["curve"]] == [2, 4, 6]
    assert high["precision"] == "fp32"  # the reference always; fpt at auto, fp32 in tests (conftest.py)


def test_time_to_accuracy_command(tiny_backbones, tmp_path, capsys):
    out = tmp_path / "tta.json"
    printed, result = _bench_command(tiny_backbones["bert"], out, capsys,
                                     "--time-to-accuracy", "0.01", "--steps", "4", "--eval-every", "2")
    result = result["time_to_accuracy"]
    assert [r["name"] for r in result["loops"]] == ["fpt", "reference"] and "speedup_to_target" in result
    assert "time to 1.0% test accuracy, reference fp32" in printed
    assert json.loads(out.read_text())["time_to_accuracy"] == result
    assert main(["bench", "--task", "bit-xor", "--backbone", tiny_backbones["bert"], "--time-to-accuracy", "97"]) != 0


def test_time_to_accuracy_stops_a_diverging_run(tiny_backbones, tmp_path):
    from fpt.bench import train_to_accuracy
    from fpt.core.errors import FPTError

    cfg = _cfg(tiny_backbones["bert"], tmp_path, steps=20, eval_every=10, lr=1e30, grad_clip=0.0)
    with pytest.raises(FPTError, match="diverged"):
        train_to_accuracy(cfg, "fpt", 1.0, log=lambda _: None)


def test_short_attention_flops_are_counted_as_its_matmuls():
    """torch's counter cannot see into fpt's short-attention kernel: count_flops runs the eager math in its
    place, whose matmuls are the kernel's (two forward, four backward)."""
    from types import SimpleNamespace

    from fpt import fastops

    if fastops.short_attention_kernels() is None:
        pytest.skip("fpt/csrc/short_attention.c needs a C compiler and a CPU with AVX512-BF16")
    module = SimpleNamespace(training=True, is_causal=False)
    q, k, v = (torch.randn(2, 3, 64, 16).bfloat16().requires_grad_() for _ in range(3))
    assert fastops.short_attention_fits(q, k, v, None)
    per_matmul = 2 * 2 * 3 * 64 * 64 * 16

    def step():
        fastops.cpu_attention(module, q, k, v, None, scaling=0.25, dropout=0.1)[0].float().sum().backward()

    assert count_flops(step) == 6 * per_matmul
