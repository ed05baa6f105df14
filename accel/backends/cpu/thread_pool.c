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
    int64_t next; /* first item not handed out yet */
    int64_t done; /* items finished (or skipped after an error) */
    int status;
    int refs; /* threads still holding the job, the caller included */
    pthread_mutex_t lock;
    pthread_cond_t finished;
} job_t;

static void set_status(job_t *job, int rc)
{
    int expected = PEC_OK;
    __atomic_compare_exchange_n(&job->status, &expected, rc, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_SEQ_CST);
}

/* Takes chunks until none is left. After an error the remaining chunks are still taken and
 * counted, without running, so that the caller's count of finished items completes. */
static void run_chunks(job_t *job, int signal)
{
    mp_limb_t *scratch = NULL;
    for (;;) {
        int64_t begin = __atomic_fetch_add(&job->next, job->grain, __ATOMIC_RELAXED);
        if (begin >= job->total)
            break;
        int64_t end = begin + job->grain < job->total ? begin + job->grain : job->total;
        /* Scratch comes with the first chunk: a thread that starts late and finds no work
         * left costs nothing. */
        if (!scratch) {
            scratch = malloc((job->scratch_limbs ? job->scratch_limbs : 1) * sizeof(mp_limb_t));
            if (!scratch)
                set_status(job, PEC_NO_MEMORY);
        }
        if (scratch && __atomic_load_n(&job->status, __ATOMIC_RELAXED) == PEC_OK) {
            int rc = job->fn(job->ctx, begin, end, scratch);
            if (rc != PEC_OK)
                set_status(job, rc);
        }
        int64_t done = __atomic_add_fetch(&job->done, end - begin, __ATOMIC_ACQ_REL);
        if (signal && done == job->total) {
            pthread_mutex_lock(&job->lock);
            pthread_cond_broadcast(&job->finished);
            pthread_mutex_unlock(&job->lock);
        }
    }
    free(scratch);
}

static void release(job_t *job)
{
    if (__atomic_sub_fetch(&job->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        pthread_cond_destroy(&job->finished);
        pthread_mutex_destroy(&job->lock);
        free(job);
    }
}

static void *helper(void *arg)
{
    job_t *job = arg;
    run_chunks(job, 1);
    release(job);
    return NULL;
}

int pec_parallel_for(int64_t total, int64_t grain, int threads, size_t scratch_limbs,
                     pec_range_fn fn, void *ctx)
{
    if (total <= 0)
        return PEC_OK;
    if (grain < 1)
        grain = 1;
    int64_t chunks = (total + grain - 1) / grain;
    int workers = threads < 1 ? 1 : threads;
    if (workers > chunks)
        workers = (int)chunks;
    job_t *job = workers > 1 ? malloc(sizeof(job_t)) : NULL;
    if (!job) {
        /* One chunk, one thread, or no memory for the shared job: the caller does it all. */
        job_t local = {.fn = fn, .ctx = ctx, .total = total, .grain = grain,
                       .scratch_limbs = scratch_limbs, .status = PEC_OK};
        run_chunks(&local, 0);
        return local.status;
    }
    *job = (job_t){.fn = fn, .ctx = ctx, .total = total, .grain = grain,
                   .scratch_limbs = scratch_limbs, .status = PEC_OK, .refs = workers};
    pthread_mutex_init(&job->lock, NULL);
    pthread_cond_init(&job->finished, NULL);
    /* Helpers are detached and hold the job by reference count: the call returns once every
     * item is done, not once every helper has exited, so a helper that the scheduler starts
     * late (a loaded machine) delays nothing. fn and ctx are never touched after the last
     * chunk is handed out, which happens before the call returns. */
    pthread_attr_t attr;
    int have_attr = pthread_attr_init(&attr) == 0;
    int detached = have_attr && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0;
    for (int i = 0; i < workers - 1; i++) {
        pthread_t id;
        /* A helper that cannot start leaves its share to the others and the caller. */
        if (!detached || pthread_create(&id, &attr, helper, job) != 0)
            __atomic_sub_fetch(&job->refs, 1, __ATOMIC_ACQ_REL);
    }
    if (have_attr)
        pthread_attr_destroy(&attr);
    run_chunks(job, 1);
    pthread_mutex_lock(&job->lock);
    while (__atomic_load_n(&job->done, __ATOMIC_ACQUIRE) < total)
        pthread_cond_wait(&job->finished, &job->lock);
    pthread_mutex_unlock(&job->lock);
    int status = job->status;
    release(job);
    return status;
}
