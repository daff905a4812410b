/* Log-linear histogram slot rule, shared by every probe.
 *
 * The same rule is written in Python in agent/stats/histogram.py (SlotLayout.slot_of); a unit
 * test compiles this file with the host C compiler and compares both over many values.
 * Plain C on purpose: no kernel or BCC types beyond u32/u64.
 *
 * With SUB = 1 << HIST_SUB_BITS: values below 2*SUB get a slot each; above that,
 * shift = floor(log2 v) - HIST_SUB_BITS and slot = shift*SUB + (v >> shift), i.e. every power
 * of two is split into SUB equal sub-buckets. Shifts above HIST_MAX_SHIFT clamp to the last slot.
 */
#ifndef EBPF_EDGE_HIST_H
#define EBPF_EDGE_HIST_H

#ifndef HIST_SUB_BITS
#error "HIST_SUB_BITS must be defined (passed by the probe as a -D flag)"
#endif
#ifndef HIST_MAX_SHIFT
#error "HIST_MAX_SHIFT must be defined (passed by the probe as a -D flag)"
#endif

#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_SLOTS ((HIST_MAX_SHIFT + 2) * HIST_SUB)

/* one histogram slot: number of values and their sum (for the mean and Prometheus _sum) */
struct hist_value {
    u64 count;
    u64 sum;
};

static __always_inline u32 log2_u64(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8)  { v >>= 8;  r += 8; }
    if (v >> 4)  { v >>= 4;  r += 4; }
    if (v >> 2)  { v >>= 2;  r += 2; }
    if (v >> 1)  { r += 1; }
    return r;
}

static __always_inline u32 hist_slot(u64 v)
{
    if (v < HIST_SUB)
        return (u32)v;
    u32 shift = log2_u64(v) - HIST_SUB_BITS;
    if (shift > HIST_MAX_SHIFT)
        return HIST_SLOTS - 1;
    return shift * HIST_SUB + (u32)(v >> shift);
}

#endif
