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
 * the task switched in is kept with its pid in a per-CPU slot (runq_cpu_state), and the next
 * sched_switch on that CPU, whose prev is that same task (a running task cannot migrate), adds
 * it to the current task's cgroup row (cgroup_rows.bpf.h). The slot is emptied at every switch,
 * so it never outlives its task's time on the CPU: idle (pid 0) never fills it, a task that
 * exits is attributed at its last switch (its cgroup is still its own there), a CPU going
 * offline switches to idle first. A slot whose pid is not prev's (a missed event) is dropped
 * and counted in runq_cgroup_misses[1]; a sample whose cgroup got no row is counted in
 * runq_cgroup_misses[0] and in lost_events.
 *
 * The lookup of a task's row (the helper's pointer chase and the row cache) is done at most
 * once per RUNQ_ROW_TTL_NS of the task's switch-ins: the row is kept in the task's
 * runq_enqueued_at entry (tagged by pid; cleared when another pid takes the entry or at
 * sched_wakeup_new), so a task moved to another cgroup is counted in its old one for up to
 * that long. While the entry's row is valid the latency goes to that row at the switch-in
 * itself and the per-CPU slot stays empty; only a task whose row is not known waits in the
 * slot for its switch-out. A row is a coarser histogram than the node's
 * (CG_SUB_BITS sub-buckets per power of two): the per-pod p50/p99 need only modest resolution,
 * and rows x slots x CPUs is the probe's largest memory.
 *
 * The node histogram and the rows are plain arrays indexed by CPU rather than per-CPU maps: a
 * per-CPU map's lookup reads its pointer table first, one more (cold) cache line per event,
 * measured at ~30 ns a switch for the node histogram on this VM (BENCHMARKS.md, section 6).
 * Only sched_switch writes them, with interrupts off, so one CPU's part of an array has one
 * writer at a time.
 *
 * Maps: runq_enqueued_at (pid % RUNQ_MAX_TASKS -> {ts ns, pid, cgroup row, row valid until};
 *       collisions counted in lost_events), runq_latency_hist (by CPU and slot: {count, sum ns}),
 *       runq_cpu_state (by CPU: the pending {latency, pid, coarse slot, switch-in time}, the
 *       cgroup row cache),
 *       runq_cgroup_words (by CPU and cgroup row: {sum ns, count by coarse slot}),
 *       runq_cgroup_misses (per-CPU [no row, pid mismatch]).
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
#define CG_ROW_WORDS (((1 + CG_SLOTS) + 7) / 8 * 8)

struct runq_start {
    u64 ts;         /* enqueue time (ns), 0 = empty */
    u32 pid;
    u32 row;        /* the task's cgroup row (or CGROUP_NO_ROW) as last looked up ... */
    u64 row_until;  /* ... valid for switch-ins before this time (ns); 0 = not known */
    u64 pad;        /* 32 bytes: an entry never straddles two cache lines */
};

/* This CPU's state, one cache-line-aligned element per possible CPU of a plain array indexed by
 * the CPU (not a per-CPU map: its lookup reads a pointer table first, one more cache line per
 * event): the pending switch-in and the cgroup row cache. */
struct runq_cpu {
    u64 latency;    /* ns */
    u32 pid;        /* 0 = empty */
    u32 slot;       /* latency's slot of the per-cgroup histogram */
    u64 since;      /* switch-in time (ns) */
    u64 pad[5];     /* the pending sample fills the first cache line; the cache starts the next */
    struct cgroup_row_cache cache[CGROUP_CACHE_SLOTS];
};

BPF_ARRAY(runq_enqueued_at, struct runq_start, RUNQ_MAX_TASKS);
/* per (CPU, slot): CPU * HIST_SLOTS + slot; user space sums the CPUs */
BPF_ARRAY(runq_latency_hist, struct hist_value, RUNQ_CPUS * HIST_SLOTS);
BPF_F_TABLE("array", int, struct runq_cpu, runq_cpu_state, RUNQ_CPUS, BPF_F_MMAPABLE);
/* per (CPU, row): CG_ROW_WORDS u64 = {sum ns, count by cg_slot() ...}, padded to whole cache
 * lines (mmap-able, so page-aligned: every row starts a line, and user space reads it by mmap) */
BPF_F_TABLE("array", int, u64, runq_cgroup_words, RUNQ_CPUS * CGROUP_ROWS * CG_ROW_WORDS,
            BPF_F_MMAPABLE);
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

static __always_inline void enqueue(u32 pid, u64 now, int new_task)
{
    u32 idx = pid % RUNQ_MAX_TASKS;
    struct runq_start *e = runq_enqueued_at.lookup(&idx);
    if (!e)
        return;
    if (e->pid != pid) {
        if (e->ts != 0)
            count_lost();
        e->row_until = 0;  /* another task's row */
    }
    if (new_task)
        e->row_until = 0;  /* a reused pid */
    e->pid = pid;
    e->ts = now;
}

/* one sample of ``latency`` ns (coarse slot ``slot``) into this CPU's part of cgroup row ``row`` */
static __always_inline void row_add(u32 cpu, u32 row, u32 slot, u64 latency)
{
    if (row >= CGROUP_ROWS) {
        cgroup_miss(0);
        count_lost();
        return;
    }
    if (slot >= CG_SLOTS)
        return;
    int base = (cpu * CGROUP_ROWS + row) * CG_ROW_WORDS;
    int at = base + 1 + slot;
    u64 *n = runq_cgroup_words.lookup(&at);
    if (n)
        (*n)++;
    u64 *sum = runq_cgroup_words.lookup(&base);
    if (sum)
        *sum += latency;
}

/* prev is switched out: the latency it was switched in with (its row not known then) goes to
 * its (current) cgroup, whose row is kept in its enqueue entry for the next RUNQ_ROW_TTL_NS */
static __always_inline void attribute_prev(u32 cpu, u32 prev_pid, struct runq_cpu *st)
{
    u32 pid = st->pid;
    if (pid == 0)
        return;
    st->pid = 0;
    if (pid != prev_pid) {
        cgroup_miss(1);
        return;
    }
    u32 row = cgroup_row(bpf_get_current_cgroup_id(), st->cache);
    u32 idx = pid % RUNQ_MAX_TASKS;
    struct runq_start *e = runq_enqueued_at.lookup(&idx);
    if (e && e->pid == pid) {
        e->row = row;
        e->row_until = st->since + RUNQ_ROW_TTL_NS;
    }
    row_add(cpu, row, st->slot, st->latency);
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    if (args->pid != 0)
        enqueue(args->pid, bpf_ktime_get_ns(), 0);
    return 0;
}

#ifdef HAVE_WAKEUP_NEW
TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
    if (args->pid != 0)
        enqueue(args->pid, bpf_ktime_get_ns(), 1);
    return 0;
}
#endif

TRACEPOINT_PROBE(sched, sched_switch)
{
    u32 cpu = bpf_get_smp_processor_id();
    struct runq_cpu *st = runq_cpu_state.lookup(&cpu);
    if (st)
        attribute_prev(cpu, args->prev_pid, st);

    u64 now = 0;  /* read the clock at most once per switch */
    if ((args->prev_state & RUNNABLE_STATE_MASK) == 0 && args->prev_pid != 0) {
        now = bpf_ktime_get_ns();
        enqueue(args->prev_pid, now, 0);
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
    u64 row_until = e->row_until;
    u32 row = e->row;
    if (now == 0)
        now = bpf_ktime_get_ns();
    u64 delta = now > ts ? now - ts : 0;

    int at = cpu * HIST_SLOTS + hist_slot(delta);
    struct hist_value *v = runq_latency_hist.lookup(&at);
    if (v) {
        v->count++;
        v->sum += delta;
    }
    if (!st)
        return 0;
    if (now < row_until) {  /* the task's row is known: attribute now, nothing pending */
        row_add(cpu, row, cg_slot(delta), delta);
        return 0;
    }
    st->latency = delta;
    st->slot = cg_slot(delta);
    st->pid = pid;
    st->since = now;
    return 0;
}
