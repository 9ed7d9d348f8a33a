"""Peak memory of a phase of a benchmark: CUDA's allocator peak, or the process RSS sampled from /proc on a CPU."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

import torch


def release_freed_memory() -> None:
    """Hand the memory freed by earlier phases back to the OS (glibc keeps freed heap pages in the process), so that
    the RSS of the next phase counts what is alive, not the high-water mark of the phases before it."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the C library already loaded in this process
    except (OSError, AttributeError):  # not glibc: RSS may still include freed memory
        pass


class PeakMemory:
    """Peak memory of a phase: CUDA max_memory_allocated, or the process RSS sampled every `interval` s on a CPU.

    On a CPU, memory freed by earlier phases is released first (`release_freed_memory`), so one phase's peak does
    not carry into the next. `pause()` / `resume()` leave out a stretch (the periodic evaluation) from the peak;
    `delta` is the peak above the level at entry (bytes).
    """

    def __init__(self, device, interval: float = 0.02):
        self.cuda, self.device, self.interval, self.peak = device.type == "cuda", device, interval, 0
        self._running = threading.Event()
        self._lock = threading.Lock()  # a sample in flight finishes before pause() returns (no sample after it)
        self._stop = False

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the lifetime peak is the best available
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self):
        while not self._stop:
            with self._lock:
                if self._running.is_set():
                    self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        if not self.cuda:
            release_freed_memory()
        self.base = torch.cuda.memory_allocated(self.device) if self.cuda else self.rss()
        self.resume()
        if not self.cuda:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def pause(self):
        with self._lock:
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) if self.cuda else self.rss())
            self._running.clear()

    def resume(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._running.set()

    def __exit__(self, *exc):
        self.pause()
        self._stop = True
        if not self.cuda:
            self._thread.join()

    @property
    def mib(self) -> float:
        return round(self.peak / 2 ** 20, 1)

    @property
    def delta(self) -> int:
        return max(self.peak - self.base, 0)
