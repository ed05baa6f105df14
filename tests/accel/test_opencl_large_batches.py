"""Large batches on a CPU OpenCL device (PoCL) must neither crash nor go wrong.

PoCL keeps every work-item's private arrays of a work-group on one worker thread's stack; a
runtime-chosen group of thousands of 64-limb exponentiations overflowed it and killed the
process with SIGSEGV (2000 rows of 4096-bit residues with 53-bit exponents did). The batches
run in a child process so that such a crash fails the test instead of the whole run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyopencl as cl

from accel import backends
from accel.backends.opencl.backend import CPU_PRIVATE_BUDGET, PRIVATE_WORDS_PER_LIMB

ROOT = Path(__file__).resolve().parents[2]

# Sizes past the crash (2000 rows); every row of every result is checked in the child.
CHILD = textwrap.dedent("""
    import json, math, random, sys
    import numpy as np
    from accel import backends
    from accel.backends.base import ints_to_limbs, limbs_to_ints

    rows = int(sys.argv[1])
    rng = random.Random(rows)
    m = rng.getrandbits(4096) | (1 << 4095) | 1
    be = backends.get("opencl")
    xs = [rng.randrange(m) for _ in range(rows)]
    es = [rng.getrandbits(53) for _ in range(rows)]
    got = limbs_to_ints(be.powmod(ints_to_limbs(xs, 64), ints_to_limbs(es, 1), m))
    powmod_ok = got == [pow(x, e, m) for x, e in zip(xs, es)]

    # multiexp with one output per work-item: 1 x 2 bases, `rows` exponent columns
    bases = [rng.randrange(m) for _ in range(2)]
    ex = [[rng.getrandbits(8) for _ in range(rows)] for _ in range(2)]
    out = be.multiexp(ints_to_limbs(bases, 64)[None], np.stack([ints_to_limbs(r, 1) for r in ex]),
                      m)
    want = [pow(bases[0], ex[0][j], m) * pow(bases[1], ex[1][j], m) % m for j in range(rows)]
    multiexp_ok = limbs_to_ints(out[0]) == want

    units = [x for x in xs if math.gcd(x, m) == 1]
    inv = limbs_to_ints(be.invmod(ints_to_limbs(units, 64), m))
    invmod_ok = len(units) > rows // 2 and all(x * y % m == 1 for x, y in zip(units, inv))
    print(json.dumps({"powmod": powmod_ok, "multiexp": multiexp_ok, "invmod": invmod_ok}))
""")


def run_child(rows: int) -> dict[str, bool]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(rows)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode} at {rows} rows (negative = killed by signal):\n"
        f"{proc.stderr[-2000:]}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_4096_bit_batches_past_the_crash_size_are_correct() -> None:
    assert run_child(3000) == {"powmod": True, "multiexp": True, "invmod": True}


def test_cpu_work_groups_keep_private_arrays_within_the_budget() -> None:
    inner = backends.get("opencl")
    assert inner.device.type & cl.device_type.CPU, "the test machine's OpenCL device is PoCL"
    for limbs in (1, 32, 64, 128):
        group = inner._group_for(limbs)
        assert group >= 1 and group & (group - 1) == 0
        assert group <= inner.max_group_size()
        assert group == 1 or group * PRIVATE_WORDS_PER_LIMB * 8 * limbs <= CPU_PRIVATE_BUDGET
    # A runtime-chosen group at 64 limbs was 1024 work-items: 10 MiB of private arrays.
    assert inner._group_for(64) <= 64
