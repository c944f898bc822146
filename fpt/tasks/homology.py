"""Remote Homology (TAPE): protein sequences over the amino-acid alphabet, 1195 fold classes.

Files in `DATA/remote_homology/`: `{split}.csv` (columns seq,label) or TAPE's
`remote_homology_{split}.lmdb` (keys primary, fold_label; needs the optional `lmdb` package), for the
splits train, valid and, where present, TAPE's test_fold_holdout, test_superfamily_holdout,
test_family_holdout. `val` is `valid`; `test` is test_fold_holdout when present, else `valid` again
(TAPE ships no other held-out split in the CSV form); each TAPE test split present is also a split of
its own name (`fpt.evaluate(exp, "test_family_holdout")`).

Sequences longer than 1024 residues are truncated to their first 1024 by default
(`long_sequences: drop` removes them instead); the count is reported in `TaskData.notes`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fpt.datasets import data_root, parse_int_labels, read_lmdb, read_table
from fpt.datasets.readers import where
from fpt.core.errors import FPTError
from fpt.tasks.base import TASKS, Batch, PaddedTokenData, Task, TaskBudget, TaskData, TaskSpec, pad_flat

NUM_FOLDS = 1195
MAX_LEN = 1024
# TAPE's amino-acid vocabulary: the 20 standard residues, then X (unknown), B, Z, O, U; id 0 is padding
AMINO = "ACDEFGHIKLMNPQRSTVWYXBZOU"
TEST_SPLITS = ("test_fold_holdout", "test_superfamily_holdout", "test_family_holdout")
_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(AMINO):
    _LUT[ord(_c)] = _LUT[ord(_c.lower())] = _i + 1


def homology_folder(data_dir) -> Path:
    return data_root(data_dir) / "remote_homology"


def _split_file(folder: Path, split: str) -> Path | None:
    for path in (folder / f"{split}.csv", folder / f"remote_homology_{split}.lmdb"):
        if path.exists():
            return path
    return None


def read_split(path: Path, split: str | None = None) -> tuple[list[str], np.ndarray]:
    if path.suffix == ".lmdb":
        items = read_lmdb(path)
        seqs = [it["primary"] for it in items]
        labels = parse_int_labels([str(it["fold_label"]) for it in items], NUM_FOLDS, path=path, split=split,
                                  first_line=None)
        return seqs, labels
    seqs, labels = read_table(path, ("seq", "label"), split=split)
    return seqs, parse_int_labels(labels, NUM_FOLDS, path=path, split=split)


def encode(seqs: list[str], *, long_sequences: str, path: Path):
    """-> flat uint8 ids, lengths, kept-row mask, number of sequences longer than MAX_LEN."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    too_long = lengths > MAX_LEN
    keep = ~too_long if long_sequences == "drop" else np.ones(len(seqs), dtype=bool)
    kept = [s[:MAX_LEN] for s, k in zip(seqs, keep) if k]
    if any(len(s) == 0 for s in kept):
        raise FPTError(f"{str(path)!r}: an empty sequence")
    ids = _LUT[np.frombuffer("".join(kept).encode("latin-1", "replace"), dtype=np.uint8)]
    if (ids == 255).any():
        bad = sorted(set("".join(kept)) - set(AMINO) - set(AMINO.lower()))
        raise FPTError(f"{str(path)!r}: characters {''.join(bad)!r} are not amino-acid letters ({AMINO})")
    return ids, np.minimum(lengths[keep], MAX_LEN), keep, int(too_long.sum())


@TASKS.register("homology")
class RemoteHomology(Task):
    """Remote homology: amino-acid ids (vocabulary 26 with padding), up to 1024 tokens, 1195 folds."""

    budgets = {
        # NOTE: proteins up to 1024 residues (median 134), batches trimmed to their longest (about 345 for
        # 8); 1,195 fold classes, and the paper's 1e5 steps are far out of reach: one epoch is 1,540 steps.
        "cpu": TaskBudget(steps=1500, eval_every=750, batch_size=8, target_accuracy=0.12),
        "gpu": TaskBudget(steps=2000, eval_every=1000, target_accuracy=0.12),
        "paper": TaskBudget(steps=100_000, eval_every=5_000, target_accuracy=0.12),
    }
    options = {"long_sequences": "truncate"}
    data_folder = "remote_homology/"
    paper_column = "remote_homology"

    @classmethod
    def prepare_data(cls, data_dir, **_) -> str:
        """Nothing to download (TAPE's files are copied in by hand): load once, which checks every split."""
        data = cls().load(seed=0, data_dir=data_dir)
        counts = ", ".join(f"{s} {len(b)}" for s, b in data.splits.items())
        return f"remote homology: {counts}; {'; '.join(data.notes) or 'no sequence over 1024'}"

    def __init__(self, **options):
        super().__init__(**options)
        if self.opts["long_sequences"] not in ("truncate", "drop"):
            raise FPTError(f"homology option long_sequences must be truncate or drop, got {self.opts['long_sequences']!r}")
        self.spec = TaskSpec(name="homology", input_kind="tokens", vocab_size=len(AMINO) + 1, seq_len=MAX_LEN,
                             num_classes=NUM_FOLDS, padded=True)

    def load(self, *, seed: int, data_dir: str | None = None) -> TaskData:
        folder = homology_folder(data_dir)
        files = {s: _split_file(folder, s) for s in ("train", "valid", *TEST_SPLITS)}
        if files["train"] is None or files["valid"] is None:
            raise FPTError(f"remote homology not found: looked for train.csv and valid.csv (or "
                           f"remote_homology_{{train,valid}}.lmdb) in {str(folder)!r}; pass --data-dir")
        splits, notes, sources = {}, [], {}
        for split, path in files.items():
            if path is None:
                continue
            seqs, labels = read_split(path, split)
            ids, lengths, keep, n_long = encode(seqs, long_sequences=self.opts["long_sequences"], path=path)
            if n_long:
                notes.append(f"{split}: {n_long} sequences over {MAX_LEN} {self.opts['long_sequences']}d")
            name = {"valid": "val"}.get(split, split)
            sources[name] = where(path, name)
            splits[name] = Batch(pad_flat(ids, lengths, MAX_LEN, what=str(path)),
                                 torch.from_numpy(labels[keep])[:, None], torch.from_numpy(lengths))
        splits["test"] = splits.get("test_fold_holdout", splits["val"])
        sources["test"] = sources.get("test_fold_holdout", sources["val"])
        if "test_fold_holdout" not in splits:  # said in result.json and under every table: not a test figure
            notes.append("test: no test_fold_holdout file, so `test` is the valid split (tools/prepare_data.sh "
                         "copies TAPE's)")
        data = PaddedTokenData(self.spec, splits)
        data.notes, data.sources = notes, sources
        return data
