"""Helpers shared by the benchmark scripts."""
import time

import numpy as np


def best_time(fn, repeat=3, min_time=0.5):
    """Best wall time of ``fn()`` per call over ``repeat`` rounds of at least ``min_time`` s each."""
    best = np.inf
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = min(best, dt / n)
    return best
