"""`precision: auto` (fpt/models/precision.py): bf16 where this device runs it faster, fp32 elsewhere, said in
the start line, config.yaml and result.json; an explicit precision obeyed, with a warning where slower."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
import yaml

import fpt.models.precision
from fpt.core.config import from_dict
from fpt.models.precision import probe_cpu, resolve
from fpt.run.launch import train

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def unpinned(monkeypatch):
    """conftest.py pins auto to fp32 for the rest of the suite; these tests are of auto itself."""
    monkeypatch.delenv("FPT_AUTO_PRECISION", raising=False)


def _rates(fp32: float, bf16: float):
    return lambda width: {"fp32_gflops": fp32, "bf16_gflops": bf16, "width": width, "cached": False}


def test_a_probe_timed_beside_another_job_is_marked_and_not_cached(monkeypatch, tmp_path):
    """A training beside the probe cut its rates to a third; cached, they would stand for the host."""
    monkeypatch.setenv("FPT_CACHE", str(tmp_path))
    monkeypatch.setattr(fpt.models.precision, "other_runnable_threads", lambda: 2)
    busy = probe_cpu(128)
    assert busy["contended"] is True and busy["cached"] is False and busy["bf16_gflops"] > 0
    assert not (tmp_path / "precision").exists()
    monkeypatch.setattr(fpt.models.precision, "other_runnable_threads", lambda: 0)
    assert "contended" not in probe_cpu(128) and probe_cpu(128)["cached"] is True


@pytest.mark.parametrize("loadavg, own, others", [
    ("2.18 2.06 1.97 3/82 18511\n", "RS", 2),   # a 2-thread training beside us
    ("0.01 0.02 0.00 1/70 99\n", "RS", 0),      # idle
    ("1.90 1.50 1.00 3/70 99\n", "RRS", 1),     # our own pool still spinning after a matmul is not another job
    (None, "R", 0), ("garbled\n", "R", 0)], ids=["training", "idle", "own-pool", "no-file", "garbled"])
def test_other_runnable_threads_counts_other_processes_only(tmp_path, loadavg, own, others):
    path, tasks = tmp_path / "loadavg", tmp_path / "task"
    if loadavg is not None:
        path.write_text(loadavg)
    for tid, state in enumerate(own):  # /proc/self/task/<tid>/stat: "tid (comm) state ..."
        (tasks / str(tid)).mkdir(parents=True)
        (tasks / str(tid) / "stat").write_text(f"{tid} (python (x)) {state} 1 2 3\n")
    assert fpt.models.precision.other_runnable_threads(str(path), str(tasks)) == others


@pytest.mark.parametrize("fp32, bf16, picked", [(240.0, 51.0, "fp32"), (120.0, 600.0, "bf16")],
                         ids=["no-native-bf16", "avx512-bf16"])
def test_auto_picks_the_faster_precision_on_the_cpu(monkeypatch, fp32, bf16, picked):
    monkeypatch.setattr(fpt.models.precision, "probe_cpu", _rates(fp32, bf16))
    resolved, info = resolve("auto", CPU, 384)
    assert resolved == picked
    assert info == {"requested": "auto", "fp32_gflops": fp32, "bf16_gflops": bf16, "width": 384, "cached": False,
                    "resolved": picked}


def test_explicit_bf16_is_obeyed_with_one_warning_where_slower(monkeypatch):
    monkeypatch.setattr(fpt.models.precision, "probe_cpu", _rates(241.0, 51.0))
    with pytest.warns(RuntimeWarning, match=r"bf16 is slower than fp32 on this CPU \(51 vs 241 GFLOP/s"):
        assert resolve("bf16", CPU, 384)[0] == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fp32 asked for: nothing to say
        assert resolve("fp32", CPU, 384)[0] == "fp32"
    monkeypatch.setattr(fpt.models.precision, "probe_cpu", _rates(120.0, 600.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # bf16 where it is faster: no warning
        assert resolve("bf16", CPU, 384)[0] == "bf16"


def test_probe_measures_both_rates_once_per_host(monkeypatch, tmp_path):
    monkeypatch.setenv("FPT_CACHE", str(tmp_path))
    monkeypatch.setattr(fpt.models.precision, "other_runnable_threads", lambda: 0)  # an idle host
    first = probe_cpu(128)
    assert first["cached"] is False and first["fp32_gflops"] > 0 and first["bf16_gflops"] > 0
    (path,) = (tmp_path / "precision").iterdir()
    assert json.loads(path.read_text())["width"] == 128
    monkeypatch.setattr(fpt.models.precision, "_rate", lambda *a, **k: pytest.fail("probed twice"))
    again = probe_cpu(128)
    assert again["cached"] is True and again["fp32_gflops"] == first["fp32_gflops"]


@pytest.mark.parametrize("fp32, bf16, picked", [(240.0, 51.0, "fp32"), (120.0, 600.0, "bf16")],
                         ids=["no-native-bf16", "avx512-bf16"])
def test_a_run_says_what_auto_picked(tiny_backbones, tmp_path, capsys, monkeypatch, fp32, bf16, picked):
    monkeypatch.setattr(fpt.models.precision, "probe_cpu", _rates(fp32, bf16))
    run_dir = tmp_path / "run"
    cfg = from_dict({"task": "bit-xor", "backbone": tiny_backbones["bert"], "init": "random", "steps": 2,
                     "eval_every": 2, "device": "cpu", "run_dir": str(run_dir),
                     "task_options": {"eval_examples": 16}})
    assert cfg.precision == "auto"  # the default
    result = train(cfg)
    start = capsys.readouterr().err.splitlines()[0]
    assert f"{picked} (auto: bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s)" in start
    assert result["precision"] == picked and result["precision_auto"]["resolved"] == picked
    assert result["precision_auto"]["fp32_gflops"] == fp32
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["precision"] == picked
    assert json.loads((run_dir / "result.json").read_text())["precision"] == picked


def test_auto_resumes_a_run_at_its_precision(tiny_backbones, tmp_path, monkeypatch):
    monkeypatch.setattr(fpt.models.precision, "probe_cpu", _rates(120.0, 600.0))
    values = {"task": "bit-xor", "backbone": tiny_backbones["bert"], "init": "random", "steps": 2, "eval_every": 2,
              "device": "cpu", "run_dir": str(tmp_path / "run"), "task_options": {"eval_examples": 16}}
    train(from_dict(values), progress=False)
    assert train(from_dict({**values, "steps": 4}), resume=True, progress=False)["precision"] == "bf16"


def test_auto_can_be_pinned_per_host(monkeypatch):
    monkeypatch.setattr(fpt.models.precision, "probe_cpu", lambda width: pytest.fail("pinned: no probe"))
    monkeypatch.setenv("FPT_AUTO_PRECISION", "bf16")
    assert resolve("auto", CPU, 384) == ("bf16", {"requested": "auto", "pinned_by": "FPT_AUTO_PRECISION",
                                                  "resolved": "bf16"})


def test_unknown_precision_names_the_choices():
    from fpt.core.errors import FPTError

    with pytest.raises(FPTError, match="choose from: auto, fp32, bf16"):
        from_dict({"precision": "fp16"})
