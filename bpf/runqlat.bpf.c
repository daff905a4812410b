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
 * Per cgroup, without reading a kernel struct: at sched_switch `current` is still the outgoing
 * task (prev), so bpf_get_current_cgroup_id() names prev's cgroup, not next's. So the latency of
 * the task switched in is kept with its pid in a per-CPU slot (runq_pending), and the next
 * sched_switch on that CPU, whose prev is that same task (a running task cannot migrate), adds
 * it to the current task's cgroup row (cgroup_rows.bpf.h). The slot is emptied at every switch,
 * so it never outlives its task's time on the CPU: idle (pid 0) never fills it, a task that
 * exits is attributed at its last switch (its cgroup is still its own there), a CPU going
 * offline switches to idle first. A slot whose pid is not prev's (a missed event) is dropped
 * and counted in runq_cgroup_misses[1]; a sample whose cgroup got no row is counted in
 * runq_cgroup_misses[0] and in lost_events. A row is a coarser histogram than the node's
 * (CG_SUB_BITS sub-buckets per power of two): the per-pod p50/p99 need only modest resolution,
 * and rows x slots x CPUs is the probe's largest memory.
 *
 * Maps: runq_enqueued_at (pid % RUNQ_MAX_TASKS -> {ts ns, pid}; collisions counted in
 *       lost_events), runq_latency_hist (per-CPU array of {count, sum ns} by slot),
 *       runq_pending (per-CPU {latency, pid, row slot}), runq_cgroup_hist (per-CPU array of
 *       {sum ns, count by coarse slot} by cgroup row), runq_cgroup_misses (per-CPU [no row,
 *       pid mismatch]).
 */
#include "common.h"
#include "hist.h"
#include "lost.bpf.h"
#include "cgroup_rows.bpf.h"

#ifndef CG_SUB_BITS
#error "CG_SUB_BITS and CG_MAX_SHIFT must be defined (passed by the probe as -D flags)"
#endif
#define CG_SUB (1u << CG_SUB_BITS)
#define CG_SLOTS ((CG_MAX_SHIFT + 2) * CG_SUB)

struct runq_start {
    u64 ts;   /* enqueue time (ns), 0 = empty */
    u32 pid;
    u32 pad;
};

struct runq_pending {
    u64 latency;  /* ns */
    u32 pid;      /* 0 = empty */
    u32 slot;     /* latency's slot of the per-cgroup histogram */
};

struct runq_cgroup_row {
    u64 sum;              /* ns */
    u64 count[CG_SLOTS];  /* by cg_slot() */
};

BPF_ARRAY(runq_enqueued_at, struct runq_start, RUNQ_MAX_TASKS);
BPF_PERCPU_ARRAY(runq_latency_hist, struct hist_value, HIST_SLOTS);
BPF_PERCPU_ARRAY(runq_pending, struct runq_pending, 1);
BPF_PERCPU_ARRAY(runq_cgroup_hist, struct runq_cgroup_row, CGROUP_ROWS);
BPF_PERCPU_ARRAY(runq_cgroup_misses, u64, 2);

/* hist_slot()'s rule with CG_SUB_BITS sub-buckets (agent/stats/histogram.py SlotLayout) */
static __always_inline u32 cg_slot(u64 v)
{
    if (v < CG_SUB)
        return (u32)v;
    u32 shift = log2_u64(v) - CG_SUB_BITS;
    if (shift > CG_MAX_SHIFT)
        return CG_SLOTS - 1;
    return shift * CG_SUB + (u32)(v >> shift);
}

static __always_inline void cgroup_miss(int kind)
{
    u64 *n = runq_cgroup_misses.lookup(&kind);
    if (n)
        (*n)++;
}

/* prev is switched out: the latency it was switched in with goes to its (current) cgroup */
static __always_inline void attribute_prev(u32 prev_pid, struct runq_pending *p)
{
    u32 pid = p->pid;
    if (pid == 0)
        return;
    p->pid = 0;
    if (pid != prev_pid) {
        cgroup_miss(1);
        return;
    }
    u32 row = cgroup_row(bpf_get_current_cgroup_id());
    if (row == CGROUP_NO_ROW) {
        cgroup_miss(0);
        count_lost();
        return;
    }
    struct runq_cgroup_row *r = runq_cgroup_hist.lookup(&row);
    if (!r)
        return;
    r->sum += p->latency;
    u32 slot = p->slot;
    if (slot < CG_SLOTS)
        r->count[slot]++;
}

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
    int zero = 0;
    struct runq_pending *pend = runq_pending.lookup(&zero);
    if (pend)
        attribute_prev(args->prev_pid, pend);

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
    if (pend) {
        pend->latency = delta;
        pend->slot = cg_slot(delta);
        pend->pid = pid;
    }
    return 0;
}
