/* runqlat: run-queue latency, the time from a task becoming runnable to running on a CPU.
 *
 * sched:sched_wakeup / sched_wakeup_new record the enqueue time by pid. sched:sched_switch
 * (1) re-queues the task switched out if it is still runnable (preempted or yielded: none of
 * the RUNNABLE_STATE_MASK bits of prev_state set; the mask is read from the running kernel's
 * format), and (2) for the task switched in, adds now - enqueue time to the histogram.
 * Latencies are in nanoseconds.
 *
 * The enqueue times live in an array indexed by pid % RUNQ_MAX_TASKS, each entry tagged with
 * its pid: an array lookup is a few inlined instructions, where a hash update on wakeup plus a
 * hash lookup and delete on switch were the probe's main cost. Two runnable tasks whose pids
 * share an entry collide: the later one overwrites it and the earlier one's sample is counted
 * in lost_events. A consumed entry is marked empty (ts = 0) rather than deleted.
 *
 * Maps: runq_enqueued_at (pid % RUNQ_MAX_TASKS -> {ts ns, pid}; collisions counted in
 *       lost_events), runq_latency_hist (per-CPU array of {count, sum ns} by slot).
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
BPF_PERCPU_ARRAY(runq_latency_hist, struct hist_value, HIST_SLOTS);

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

    u32 slot = hist_slot(delta);
    struct hist_value *v = runq_latency_hist.lookup(&slot);
    if (v) {
        v->count++;
        v->sum += delta;
    }
    return 0;
}
