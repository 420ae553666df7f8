"""A dependency-free progress line for folders, videos and evaluation runs."""
import sys
import time

from src.utils.logger import format_duration


class Progress:
    """Prints ``label [done/total] rate ETA`` on one terminal line, at most every
    ``interval`` seconds (always on the last item), to stderr."""

    def __init__(self, total, label="", unit="img", interval=1.0, stream=None):
        self.total, self.label, self.unit, self.interval = total, label, unit, interval
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.last_print = time.time()

    def update(self, count=1):
        self.done += count
        now = time.time()
        if now - self.last_print >= self.interval or self.done >= self.total:
            self.last_print = now
            rate = self.done / max(now - self.start, 1e-9)
            remaining = (self.total - self.done) / rate if rate > 0 else 0.0
            self.stream.write(f"\r{self.label} [{self.done}/{self.total}] {rate:.2f} {self.unit}/s "
                              f"ETA {format_duration(remaining)}   ")
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
