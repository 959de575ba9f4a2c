"""Loaded by a node started with this directory on PYTHONPATH (`python -m bench.w6
--gc-probe`): writes every cyclic-GC collection of the oldest generation, and any longer
than 10 ms, to stderr (the node's log) as `GCPROBE gen=<n> ms=<duration>`."""

import gc
import sys
import time

_started = [0.0]


def _probe(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    if took > 0.01 or info.get("generation") == 2:
        sys.stderr.write(f"GCPROBE gen={info.get('generation')} ms={1000 * took:.1f}\n")


gc.callbacks.append(_probe)
