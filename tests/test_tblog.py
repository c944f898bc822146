"""fpt/run/tblog.py: metrics records as grouped TensorBoard tags, and a run's hyperparameters for the HPARAMS
dashboard, read back with TensorBoard's own reader (no training: the writer alone)."""
import pytest

from fpt.run.tblog import ScalarLog, tag

RECORDS = [
    {"step": 10, "train_loss": 0.7, "train_accuracy": 0.5, "val_accuracy": 0.6, "val_loss": 0.65, "lr": 1e-3,
     "elapsed_s": 1.5},
    {"step": 20, "train_loss": 0.5, "train_accuracy": 0.7, "val_accuracy": 0.8, "val_loss": 0.45, "lr": 5e-4,
     "elapsed_s": 3.0, "test_accuracy": 0.79, "test_loss": 0.46},
]


def test_tags_are_grouped_by_split():
    assert [tag(k) for k in ("train_loss", "train_accuracy", "val_accuracy", "val_loss", "test_accuracy", "lr",
                             "elapsed_s", "other")] == \
        ["train/loss", "train/accuracy", "val/accuracy", "val/loss", "test/accuracy", "train/lr",
         "time/elapsed_s", "other"]


def test_scalar_log_writes_grouped_tags_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    log = ScalarLog(tmp_path, purge_step=0)
    for record in RECORDS:
        log.write(record)
    config = {"task": "bit-xor", "lr": 1e-3, "train": ["input", "output"], "early_stop": None,
              "compile": False, "task_options": {"eval_examples": 200}, "steps": 20}
    log.write_hparams(config, {"test_accuracy": 0.79, "best_val_accuracy": 0.8, "missing": None}, step=20)
    log.writer.close()

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "train/lr", "val/accuracy", "val/loss", "test/accuracy",
            "test/loss", "time/elapsed_s"} <= scalars
    assert [(e.step, e.value) for e in events.Scalars("train/lr")] == \
        [(10, pytest.approx(1e-3)), (20, pytest.approx(5e-4))]
    assert [e.step for e in events.Scalars("test/accuracy")] == [20]  # only where a record has it
    assert {"hparams/test_accuracy", "hparams/best_val_accuracy"} <= scalars and "hparams/missing" not in scalars

    content = events.PluginTagToContent("hparams")
    start = next(plugin_data_pb2.HParamsPluginData.FromString(v).session_start_info
                 for k, v in content.items() if "session_start" in k)
    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert hparams["task"] == "bit-xor" and hparams["lr"] == pytest.approx(1e-3) and hparams["steps"] == 20
    assert hparams["train"] == "input,output" and hparams["compile"] == "false"
    assert hparams["task_options"] == '{"eval_examples": 200}' and "early_stop" not in hparams
    experiment = next(plugin_data_pb2.HParamsPluginData.FromString(v).experiment
                      for k, v in content.items() if k.endswith("experiment"))
    assert {m.name.tag for m in experiment.metric_infos} == {"hparams/test_accuracy", "hparams/best_val_accuracy"}
