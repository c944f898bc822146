"""fpt: Frozen Pretrained Transformers (Lu, Grover, Abbeel, Mordatch, 2021) as a library.

    import fpt
    result = fpt.train(fpt.TrainConfig(task="bit-xor", backbone="minilm", steps=500))
    run = fpt.load_run(result["run_dir"])  # the trained model, for run.evaluate("test") or run.predict(FILE)
    fpt.export_run(result["run_dir"], "my-fpt")  # model.safetensors + config.json + README.md; load_run reads it
"""
__version__ = "0.1.0"

from fpt.core.config import TrainConfig  # noqa: E402
from fpt.core.errors import FPTError  # noqa: E402


def __getattr__(name):
    # Lazy: `import fpt` stays cheap; torch and transformers load on first use.
    if name == "train":
        from fpt.run.launch import train

        return train
    if name == "evaluate":
        from fpt.run.step import evaluate

        return evaluate
    if name == "build_experiment":
        from fpt.run.experiment import build_experiment

        return build_experiment
    if name in ("build_fpt", "apply_trainable", "count_parameters", "format_counts", "parameter_groups"):
        from fpt.models import model

        return getattr(model, name)
    if name == "load_backbone":
        from fpt.backbones import load_backbone

        return load_backbone
    if name == "load_run":
        from fpt.inference import load_run

        return load_run
    if name == "export_run":
        from fpt.inference.export import export_run

        return export_run
    if name == "build_task":
        from fpt.tasks import build_task

        return build_task
    raise AttributeError(name)


__all__ = ["TrainConfig", "FPTError", "train", "evaluate", "build_experiment", "build_fpt",
           "apply_trainable", "count_parameters", "load_backbone", "build_task", "load_run",
           "export_run"]


def __dir__():
    # the lazy names too: `dir(fpt)` and tab completion show load_run, train, ...
    return sorted(set(globals()) | set(__all__))
