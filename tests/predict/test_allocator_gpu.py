"""On a GPU: the allocator model against PyTorch's real caching allocator, on the same trace.

The trace runs in a fresh process (a new CUDA caching allocator with nothing cached) as raw
uint8 tensors, so every request is exactly the size the model sees and no kernel allocates
workspace. Marked gpu: skipped without CUDA.
"""
import json
import random
import subprocess
import sys

import pytest

from enact_bench.predict.allocator import replay

MIB = 2**20


def _trace(seed: int = 0, n: int = 400) -> list[tuple[str, int, int]]:
    rng = random.Random(seed)
    live, events, key = [], [], 0
    for _ in range(n):
        if live and rng.random() < 0.45:
            k, nbytes = live.pop(rng.randrange(len(live)))
            events.append(("free", k, nbytes))
            continue
        kind = rng.random()
        if kind < 0.5:
            nbytes = rng.randrange(1, MIB + 1)  # small pool
        elif kind < 0.85:
            nbytes = rng.randrange(MIB + 1, 10 * MIB)  # 20 MiB segments
        else:
            nbytes = rng.randrange(10 * MIB, 64 * MIB)  # own segments
        key += 1
        live.append((key, nbytes))
        events.append(("alloc", key, nbytes))
    return events


_RUN = """
import json, sys, torch
events = json.loads(sys.stdin.read())
torch.cuda.init()
live = {}
for kind, key, nbytes in events:
    if kind == "alloc":
        live[key] = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    else:
        del live[key]
s = torch.cuda.memory_stats()
print(json.dumps({"alloc": s["allocated_bytes.all.peak"], "reserved": s["reserved_bytes.all.peak"],
                  "requested": s["requested_bytes.all.peak"], "segments": s["segment.all.peak"]}))
"""


@pytest.mark.gpu
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_model_matches_the_cuda_caching_allocator(seed):
    events = _trace(seed)
    out = subprocess.run([sys.executable, "-c", _RUN], input=json.dumps(events), capture_output=True,
                         text=True, check=True, env=_env())
    real = json.loads(out.stdout.strip().splitlines()[-1])
    model = replay(events)
    assert real["requested"] == model.requested_peak_bytes
    assert real["alloc"] == model.alloc_peak_bytes
    assert real["reserved"] == model.reserved_peak_bytes
    assert real["segments"] == model.segments_peak


def _env():
    """This environment without allocator settings: the model assumes PyTorch's defaults."""
    import os
    return {k: v for k, v in os.environ.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
