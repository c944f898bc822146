"""Progress on stderr: a tqdm bar on a terminal; in a log file, plain lines with the percentage done, the
rate and the time left."""
from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    """'1h02m', '4m05s', '12s'."""
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class Progress:
    """A tqdm bar on stderr; where stderr is not a terminal (a log file, CI), plain lines with the percentage
    done, the rate and the time left: one at each evaluation, and one every 30 s between them."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, file=sys.stderr, dynamic_ncols=True,
                            mininterval=1.0, disable=None, leave=False)
        self.enabled = enabled
        self.total, self.step, self.first_step = total, initial, initial
        self.started = self.last_line = time.perf_counter()
        self.postfix: dict = {}

    @property
    def plain(self) -> bool:
        return self.enabled and (self.bar is None or self.bar.disable)

    def _line(self, extra: str = "") -> str:
        elapsed = time.perf_counter() - self.started
        rate = (self.step - self.first_step) / elapsed if elapsed > 0 else 0.0
        eta = f"  ETA {_duration((self.total - self.step) / rate)}" if rate > 0 else ""
        return (f"step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%){extra}"
                f"  {rate:.2f} steps/s{eta}")

    def update(self, n: int, **postfix):
        self.step += n
        self.postfix = postfix
        if self.bar is not None and not self.bar.disable:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif self.enabled:
            now = time.perf_counter()
            if now - self.last_line >= 30:
                print(self._line("  " + " ".join(f"{k} {v}" for k, v in postfix.items())), file=sys.stderr,
                      flush=True)
                self.last_line = now

    def progress_line(self, record: dict) -> None:
        """At an evaluation, in a log file: where the run stands and how long it has left."""
        if self.plain:
            print(self._line(), file=sys.stderr, flush=True)
            self.last_line = time.perf_counter()

    def write(self, line: str):
        if not self.enabled:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()
