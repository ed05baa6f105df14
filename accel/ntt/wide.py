"""64 x 64 -> 128-bit multiplication for Numba kernels.

Numba has no 128-bit integer type, but LLVM does: widening both operands to ``i128`` and
keeping the high word compiles to a single ``mul`` (or ``mulx``) instruction on x86-64 and
``umulh`` on AArch64. The portable alternative, four 32 x 32 products, runs at the same speed
with the LLVM 22 that llvmlite 0.50 bundles only because that LLVM recognises the idiom and
emits the same ``mulx`` (measured, docs/ntt.md); the intrinsic does not depend on it.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def mulhi(typingctx, a, b):
    """High 64 bits of the 128-bit product ``a * b`` of two ``uint64``."""
    if a != types.uint64 or b != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        wide = ir.IntType(128)
        x, y = (builder.zext(v, wide) for v in args)
        high = builder.lshr(builder.mul(x, y), ir.Constant(wide, 64))
        return builder.trunc(high, ir.IntType(64))

    return types.uint64(types.uint64, types.uint64), codegen
