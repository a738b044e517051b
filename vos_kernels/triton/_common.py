"""Device helpers shared by the Triton kernels."""
import triton
import triton.language as tl


@triton.jit
def dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with float32 accumulation; PRECISION is tl.dot's input_precision ("ieee" or "tf32").

    UPCAST: compute on float32 copies of the operands (the CPU interpreter's bfloat16 tl.dot is
    wrong; configs.upcast_dots decides).
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    return tl.dot(a, b, input_precision=PRECISION)
