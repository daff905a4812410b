/* bench variant (not loaded by the agent): runqlat's program as of 0fc7047 (node histogram only,
 * no per-pod attribution) with one change, its node histogram in a plain array by (CPU, slot)
 * as bpf/runqlat.bpf.c has it since issue 20, instead of a per-CPU array. Measured next to
 * 0fc7047 and the working tree, it tells how much of the working tree's cost against 0fc7047
 * is the cheaper node histogram and how much the per-pod attribution (BENCHMARKS.md, section 6):
 *
 *   .venv/bin/python -m bench.where_time_goes --ref 0fc7047 \
 *       --variant runqlat:bench/variants/runqlat-0fc7047-node-plain.bpf.c
 */
#include "common.h"
#include "hist.h"
#include "lost.bpf.h"

struct runq_start {
    u64 ts;   /* enqueue time (ns), 0 = empty */
    u32 pid;
    u32 pad;
};

BPF_ARRAY(runq_enqueued_at, struct runq_start, RUNQ_MAX_TASKS);
BPF_ARRAY(runq_latency_hist, struct hist_value, RUNQ_CPUS * HIST_SLOTS);

static __always_inline void enqueue(u32 pid, u64 now)
{
    u32 idx = pid % RUNQ_MAX_TASKS;
    struct runq_start *e = runq_enqueued_at.lookup(&idx);
    if (!e)
        return;
    if (e->ts != 0 && e->pid != pid)
        count_lost();
    e->pid = pid;
    e->ts = now;
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    if (args->pid != 0)
        enqueue(args->pid, bpf_ktime_get_ns());
    return 0;
}

#ifdef HAVE_WAKEUP_NEW
TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
    if (args->pid != 0)
        enqueue(args->pid, bpf_ktime_get_ns());
    return 0;
}
#endif

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = 0;  /* read the clock at most once per switch */
    if ((args->prev_state & RUNNABLE_STATE_MASK) == 0 && args->prev_pid != 0) {
        now = bpf_ktime_get_ns();
        enqueue(args->prev_pid, now);
    }

    u32 pid = args->next_pid;
    if (pid == 0)
        return 0;
    u32 idx = pid % RUNQ_MAX_TASKS;
    struct runq_start *e = runq_enqueued_at.lookup(&idx);
    if (!e || e->ts == 0 || e->pid != pid)
        return 0;
    u64 ts = e->ts;
    e->ts = 0;
    if (now == 0)
        now = bpf_ktime_get_ns();
    u64 delta = now > ts ? now - ts : 0;

    int at = bpf_get_smp_processor_id() * HIST_SLOTS + hist_slot(delta);
    struct hist_value *v = runq_latency_hist.lookup(&at);
    if (v) {
        v->count++;
        v->sum += delta;
    }
    return 0;
}
