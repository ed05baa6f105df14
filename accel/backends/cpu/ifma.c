/* Whether the IFMA kernels run: the CPU must have them, and the call must be big enough. */
#include "ifma.h"

#include "ifma_arith.h"

int pec_ifma_usable(void)
{
#if PEC_HAVE_IFMA
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512ifma");
#else
    return 0;
#endif
}

int pec_ifma_worth(const pec_modulus *m, int64_t rows)
{
    /* Below a few rows the idle lanes cost more than the wider multiplier gains; below 256
     * bits GMP's scalar code is already short. */
    return rows >= 3 && m->limbs >= 4 && digits_for(m) <= MAX_DIGITS && pec_ifma_usable();
}
