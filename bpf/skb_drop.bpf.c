/* skb_drop: freed skbs by drop reason.
 *
 * skb:kfree_skb carries "enum skb_drop_reason reason" since 5.17. The numbers differ between
 * kernel versions, so they are counted raw here and named in user space from the running
 * kernel's own table (tracepoint format / BTF). Kernels without the field (HAVE_REASON unset)
 * count everything in the UNKNOWN slot.
 *
 * Map drops_by_reason: per-CPU array, index = reason number, clamped:
 *   DROP_SLOTS-2 = a reason number too large for the array, DROP_SLOTS-1 = no reason field.
 */
#include "common.h"

#ifdef HAVE_REASON
/* The tracepoint struct BCC generates names this enum; only its size (an int) matters here,
 * so it is declared rather than taken from headers of a possibly different kernel. */
enum skb_drop_reason { SKB_DROP_REASON_EBPF_EDGE_SIZE_ONLY };
#endif

#define DROP_SLOT_OUT_OF_RANGE (DROP_SLOTS - 2)
#define DROP_SLOT_UNKNOWN (DROP_SLOTS - 1)

BPF_PERCPU_ARRAY(drops_by_reason, u64, DROP_SLOTS);

TRACEPOINT_PROBE(skb, kfree_skb)
{
#ifdef HAVE_REASON
    u32 slot = (u32)args->reason;
    if (slot >= DROP_SLOT_OUT_OF_RANGE)
        slot = DROP_SLOT_OUT_OF_RANGE;
#else
    u32 slot = DROP_SLOT_UNKNOWN;
#endif
    u64 *v = drops_by_reason.lookup(&slot);
    if (v)
        (*v)++;
    return 0;
}
