#include "thread_pool.h"

#include <pthread.h>
#include <stdlib.h>

#include "pec_cpu.h"

typedef struct {
    pec_range_fn fn;
    void *ctx;
    int64_t total;
    int64_t grain;
    size_t scratch_limbs;
    int64_t next;
    int status;
} job_t;

static void *worker(void *arg)
{
    job_t *job = arg;
    mp_limb_t *scratch = malloc((job->scratch_limbs ? job->scratch_limbs : 1) * sizeof(mp_limb_t));
    if (!scratch) {
        int expected = PEC_OK;
        __atomic_compare_exchange_n(&job->status, &expected, PEC_NO_MEMORY, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST);
        return NULL;
    }
    for (;;) {
        if (__atomic_load_n(&job->status, __ATOMIC_RELAXED) != PEC_OK)
            break;
        int64_t begin = __atomic_fetch_add(&job->next, job->grain, __ATOMIC_RELAXED);
        if (begin >= job->total)
            break;
        int64_t end = begin + job->grain < job->total ? begin + job->grain : job->total;
        int rc = job->fn(job->ctx, begin, end, scratch);
        if (rc != PEC_OK) {
            int expected = PEC_OK;
            __atomic_compare_exchange_n(&job->status, &expected, rc, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST);
        }
    }
    free(scratch);
    return NULL;
}

int pec_parallel_for(int64_t total, int64_t grain, int threads, size_t scratch_limbs,
                     pec_range_fn fn, void *ctx)
{
    if (total <= 0)
        return PEC_OK;
    if (grain < 1)
        grain = 1;
    job_t job = {fn, ctx, total, grain, scratch_limbs, 0, PEC_OK};
    int64_t chunks = (total + grain - 1) / grain;
    int workers = threads < 1 ? 1 : threads;
    if (workers > chunks)
        workers = (int)chunks;

    pthread_t *ids = NULL;
    int started = 0;
    if (workers > 1) {
        ids = malloc((size_t)(workers - 1) * sizeof(pthread_t));
        /* Without memory for thread ids the caller's thread still does all the work. */
        for (int i = 0; ids && i < workers - 1; i++) {
            if (pthread_create(&ids[i], NULL, worker, &job) != 0)
                break;
            started++;
        }
    }
    worker(&job);
    for (int i = 0; i < started; i++)
        pthread_join(ids[i], NULL);
    free(ids);
    return job.status;
}
