"""ListOps (Long Range Arena): nested MIN / MAX / MED / SM lists over the digits 0-9, 10 classes.

A seeded generator faithful to LRA's (max depth 10, 2-10 arguments, an operator with probability 0.25
below the maximum depth, 500 < length < 2000 counting digits, operators and `]`), deduplicated on the
string. It writes each tree straight into a flat string, one character per token, and abandons a tree
as soon as it reaches the maximum length, so memory stays at the size of the accepted data (LRA's
tuple trees, built in full before the length test, need gigabytes). Rejection is on the final length
and length only grows, so stopping early accepts exactly the trees LRA's loop accepts.

Files: `DATA/listops/basic_{train,val,test}.tsv` (columns Source, Target), LRA's own or those
`fpt data prepare listops` writes. The default tokeniser keeps operators, digits and `]`; with the
`paper_pipeline` option it keeps only alphanumerics (every bracket dropped, which makes many
expressions ambiguous) and cuts to the first 512 tokens, as the paper's code did. Padding is masked and
the output read from the last real token in both.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from fpt.datasets import data_root, load_cached, parse_int_labels, read_table, save_cached
from fpt.datasets.readers import where
from fpt.core.errors import FPTError
from fpt.tasks.base import TASKS, Batch, PaddedTokenData, Task, TaskBudget, TaskData, TaskSpec, pad_flat

SPLITS = {"train": 96_000, "val": 2_000, "test": 2_000}
MAX_DEPTH, MAX_ARGS, OP_PROB = 10, 10, 0.25
MIN_LEN, MAX_LEN = 500, 2000  # exclusive bounds, as LRA
PAPER_MAX_TOKENS = 512
OPS = ("[MIN", "[MAX", "[MED", "[SM")
# one character per token in memory: digits as themselves, operators a-d, the closing bracket ]
OP_CHARS = "abcd"
TO_TEXT = str.maketrans({**{d: f"{d} " for d in "0123456789"}, **{c: f"{o} " for c, o in zip(OP_CHARS, OPS)},
                         "]": "] "})
VOCAB = ["<pad>", *"0123456789", *OPS, "]"]  # id 0 is padding
_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate("0123456789" + OP_CHARS + "]"):
    _LUT[ord(_c)] = _i + 1


DIGITS = "0123456789"


class _TooLong(Exception):
    pass


def _tree(rng: random.Random, out: list[str], depth: int) -> int:
    """Append one (sub)tree's tokens to `out`; return its value. Raises _TooLong past MAX_LEN tokens."""
    r = rng.random()
    if depth >= MAX_DEPTH or r > OP_PROB:  # a digit, uniform over 0-9
        v = int(rng.random() * 10)
        out.append(DIGITS[v])
        return v
    if len(out) + 2 >= MAX_LEN:
        raise _TooLong
    n_args = 2 + int(rng.random() * (MAX_ARGS - 1))  # uniform over 2..MAX_ARGS
    op = int(rng.random() * 4)
    out.append(OP_CHARS[op])
    args = [_tree(rng, out, depth + 1) for _ in range(n_args)]
    out.append("]")
    if len(out) >= MAX_LEN:
        raise _TooLong
    if op == 0:
        return min(args)
    if op == 1:
        return max(args)
    if op == 2:
        args.sort()  # integer median, as LRA's int(np.median(args)): the mean of the middle two, floored
        m = len(args) // 2
        return args[m] if len(args) % 2 else (args[m - 1] + args[m]) // 2
    return sum(args) % 10


def generate(n: int, *, seed: int) -> tuple[list[str], np.ndarray]:
    """`n` distinct expressions (compact strings, one char per token) and their values, seeded."""
    rng = random.Random(seed)
    seen: set[str] = set()
    exprs, labels = [], []
    while len(exprs) < n:
        out: list[str] = []
        try:
            value = _tree(rng, out, 1)
        except _TooLong:
            continue
        if MIN_LEN < len(out) < MAX_LEN:
            s = "".join(out)
            if s not in seen:
                seen.add(s)
                exprs.append(s)
                labels.append(value)
    return exprs, np.array(labels, dtype=np.int64)


def to_source(compact: str) -> str:
    """Compact string -> LRA's token text (`[MAX 2 9 ]`, without LRA's redundant parentheses)."""
    return compact.translate(TO_TEXT).rstrip()


def to_compact(source: str) -> str:
    """LRA `Source` text (with or without parentheses) -> compact string."""
    s = source.replace("(", "").replace(")", "")
    for c, op in zip(OP_CHARS, OPS):
        s = s.replace(op, c)
    return "".join(s.split())


def encode(compacts: list[str], *, paper: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Compact strings -> (flat uint8 ids, lengths). `paper`: alphanumerics only, first 512 tokens."""
    if paper:
        compacts = [c.replace("]", "")[:PAPER_MAX_TOKENS] for c in compacts]
    lengths = np.fromiter((len(c) for c in compacts), dtype=np.int64, count=len(compacts))
    ids = _LUT[np.frombuffer("".join(compacts).encode("latin-1", "replace"), dtype=np.uint8)]
    if (ids == 255).any():
        raise FPTError(f"{what}: unknown token in ListOps source (expected digits, {', '.join(OPS)} and ])")
    return ids, lengths


def listops_folder(data_dir) -> Path:
    return data_root(data_dir) / "listops"


def tsv_paths(folder: Path) -> dict[str, Path]:
    return {s: folder / f"basic_{s}.tsv" for s in SPLITS}


def prepare_listops(data_dir, *, seed: int = 0, sizes: dict[str, int] | None = None) -> str:
    """Generate the splits and write them as LRA-format TSV files; returns a summary line."""
    import resource

    sizes = sizes or SPLITS
    folder = listops_folder(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    exprs, labels = generate(sum(sizes.values()), seed=seed)
    gen_s = time.perf_counter() - t0
    start = 0
    for split, n in sizes.items():
        path = tsv_paths(folder)[split]
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "w") as f:
            f.write("Source\tTarget\n")
            for e, y in zip(exprs[start:start + n], labels[start:start + n]):
                f.write(f"{to_source(e)}\t{y}\n")
        tmp.replace(path)
        start += n
    lengths = np.array([len(e) for e in exprs])
    dist = np.bincount(labels, minlength=10) / len(labels)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (f"ListOps in {folder}: {', '.join(f'{s} {n}' for s, n in sizes.items())}; lengths {lengths.min()}"
            f"..{lengths.max()} (mean {lengths.mean():.0f}); labels % {' '.join(f'{100 * d:.1f}' for d in dist)}; "
            f"generated in {gen_s:.1f} s, total {time.perf_counter() - t0:.1f} s, peak RSS {peak_mb:.0f} MB")


def load_listops_arrays(data_dir, *, paper: bool) -> dict[str, np.ndarray]:
    folder = listops_folder(data_dir)
    paths = tsv_paths(folder)
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise FPTError(f"ListOps not found: {', '.join(missing)} missing from {str(folder)!r}; "
                       "run `fpt data prepare listops` (generates it) or copy LRA's files there")
    key = "listops-paper" if paper else "listops"
    sources = list(paths.values())
    cached = load_cached(folder, key, sources)
    if cached is not None:
        return cached
    arrays = {}
    for split, path in paths.items():
        src, tgt = read_table(path, ("Source", "Target"), delimiter="\t", split=split)
        ids, lengths = encode([to_compact(s) for s in src], paper=paper, what=str(path))
        arrays[f"{split}_ids"], arrays[f"{split}_len"] = ids, lengths
        arrays[f"{split}_y"] = parse_int_labels(tgt, 10, path=path, split=split)
    save_cached(folder, key, sources, arrays)
    return arrays


@TASKS.register("listops")
class ListOps(Task):
    """ListOps: token ids (digits, operators, `]`), padded to 1999, read from the last real token."""

    budgets = {
        # NOTE: the paper's own ListOps pipeline (alphanumerics only, first 512 tokens): the figure the paper
        # reports came from it, and 512 tokens fit the budget where LRA's 2000 do not. Batch 16 (the step
        # is 4x MNIST's per example); two evaluations of 2,000 + 2,000 expressions.
        "cpu": TaskBudget(steps=1000, eval_every=500, batch_size=16, target_accuracy=0.38,
                          task_options={"paper_pipeline": True}),
        "gpu": TaskBudget(steps=2000, eval_every=500, target_accuracy=0.38, task_options={"paper_pipeline": True}),
        "paper": TaskBudget(steps=10_000, eval_every=500, target_accuracy=0.38),
    }
    options = {"paper_pipeline": False}
    data_folder = "listops/"
    paper_column = "listops"

    @classmethod
    def prepare_data(cls, data_dir, *, seed: int = 0, sizes: str | None = None, **_) -> str:
        """Generate with `seed`; `sizes` is the CLI's "TRAIN,VAL,TEST" (default SPLITS); tokenise once and cache."""
        counts = None
        if sizes:
            try:
                counts = dict(zip(SPLITS, (int(v) for v in sizes.split(","))))
            except ValueError as e:
                raise FPTError(f"--sizes must be three integers TRAIN,VAL,TEST, got {sizes!r}") from e
            if len(counts) != 3 or min(counts.values()) < 1:
                raise FPTError(f"--sizes must be three positive integers TRAIN,VAL,TEST, got {sizes!r}")
        message = prepare_listops(data_dir, seed=seed, sizes=counts)
        load_listops_arrays(data_dir, paper=False)  # tokenise once and cache
        return message

    def __init__(self, **options):
        super().__init__(**options)
        paper = bool(self.opts["paper_pipeline"])
        self.spec = TaskSpec(name="listops", input_kind="tokens", vocab_size=len(VOCAB),
                             seq_len=PAPER_MAX_TOKENS if paper else MAX_LEN - 1, num_classes=10, padded=True)

    def load(self, *, seed: int, data_dir: str | None = None) -> TaskData:
        a = load_listops_arrays(data_dir, paper=bool(self.opts["paper_pipeline"]))
        # NOTE: ids stay uint8 in memory (96k x 1999 as long would be 1.5 GB); batches are cast and trimmed.
        splits = {s: Batch(pad_flat(a[f"{s}_ids"], a[f"{s}_len"], self.spec.seq_len, what="ListOps"),
                           torch.from_numpy(a[f"{s}_y"])[:, None], torch.from_numpy(a[f"{s}_len"]))
                  for s in SPLITS}
        data = PaddedTokenData(self.spec, splits)
        data.sources = {s: where(path, s) for s, path in tsv_paths(listops_folder(data_dir)).items()}
        return data
