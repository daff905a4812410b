/* runqlat: run-queue latency, the time from a task becoming runnable to running on a CPU.
 *
 * sched:sched_wakeup / sched_wakeup_new record the enqueue time by pid. sched:sched_switch
 * (1) re-queues the task switched out if it is still runnable (preempted or yielded: none of
 * the RUNNABLE_STATE_MASK bits of prev_state set; the mask is read from the running kernel's
 * format), and (2) for the task switched in, adds now - enqueue time to the histogram.
 * Latencies are in nanoseconds.
 *
 * Maps: runq_enqueued_at (pid -> ns, bounded; overflow counted in runq_lost),
 *       runq_latency_hist (per-CPU array of {count, sum ns} by slot).
 */
#include "common.h"

BPF_HASH(runq_enqueued_at, u32, u64, RUNQ_MAX_TASKS);
BPF_PERCPU_ARRAY(runq_latency_hist, struct hist_value, HIST_SLOTS);
BPF_PERCPU_ARRAY(runq_lost, u64, 1);

static __always_inline void count_lost(void)
{
    int zero = 0;
    u64 *lost = runq_lost.lookup(&zero);
    if (lost)
        (*lost)++;
}

static __always_inline int enqueue(u32 pid)
{
    if (pid == 0)
        return 0;
    u64 ts = bpf_ktime_get_ns();
    if (runq_enqueued_at.update(&pid, &ts) != 0)
        count_lost();
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    return enqueue(args->pid);
}

#ifdef HAVE_WAKEUP_NEW
TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
    return enqueue(args->pid);
}
#endif

TRACEPOINT_PROBE(sched, sched_switch)
{
    if ((args->prev_state & RUNNABLE_STATE_MASK) == 0)
        enqueue(args->prev_pid);

    u32 pid = args->next_pid;
    if (pid == 0)
        return 0;
    u64 *tsp = runq_enqueued_at.lookup(&pid);
    if (!tsp)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 delta = now > *tsp ? now - *tsp : 0;
    runq_enqueued_at.delete(&pid);

    u32 slot = hist_slot(delta);
    struct hist_value *v = runq_latency_hist.lookup(&slot);
    if (v) {
        v->count++;
        v->sum += delta;
    }
    return 0;
}
