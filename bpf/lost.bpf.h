/* lost_events: events the kernel could not record because a bounded map was full.
 *
 * A one-slot per-CPU array; user space sums it into the probe's "lost" figure
 * (ebpf_probe_lost_events), so a full map is never hidden. Like every *.bpf.h file this one is
 * pasted into the probe's text before BCC compiles it (agent/probes/base.py, load_source):
 * BCC rewrites map calls only in the main file, which is why the helper can live here. Each
 * probe is its own BPF object, so every probe's map has the same name.
 */
#ifndef EBPF_EDGE_LOST_BPF_H
#define EBPF_EDGE_LOST_BPF_H

BPF_PERCPU_ARRAY(lost_events, u64, 1);

static __always_inline void count_lost(void)
{
    int zero = 0;
    u64 *lost = lost_events.lookup(&zero);
    if (lost)
        (*lost)++;
}

#endif
