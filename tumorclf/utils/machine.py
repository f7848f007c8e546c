"""What this machine is and what it can do: its CPU, and the dense-math limit every speed is compared with.

`peak_gflops` measures the limit once per machine and library version and keeps it beside the caches, so a
training run can state the share of it each of its phases reached without a benchmark of its own.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from tumorclf.utils.files import atomic_write_json, versions


def machine() -> dict:
    """CPU model, core count, memory and bf16 support, for reading the numbers later."""
    info = {"platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                           if line.startswith("model name"))
        info["avx512_bf16"] = "avx512_bf16" in cpuinfo
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return info


def matmul_gflops(dtype: str, n: int = 4096, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an n x n matmul: the machine's practical limit for dense math."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n)), dtype)
    run = tf.function(lambda: tf.matmul(a, a))
    run().numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        result = run()
    result.numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def peak_gflops(dtype: str, folder: Path) -> float:
    """`matmul_gflops(dtype)` on this machine, measured once and kept in `folder`/machine.json (keyed by the CPU
    and the TensorFlow version)."""
    path = Path(folder) / "machine.json"
    key = f"{machine().get('cpu', platform.machine())}|{os.cpu_count()}|{versions().get('tensorflow')}|{dtype}"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = round(matmul_gflops(dtype, n=2048, repeats=3), 1)  # a fraction of a second
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, known)
    return float(known[key])
