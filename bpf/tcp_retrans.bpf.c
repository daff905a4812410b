/* tcp_retrans: retransmitted skbs, per local address.
 *
 * tcp:tcp_retransmit_skb fires once per retransmitted skb; with TSO/GSO one skb can carry many
 * segments, so these are skb counts (the segment rate comes from the kernel's SNMP counters).
 * saddr_v6 always holds the local address, IPv4 as IPv4-mapped (TP_STORE_ADDRS), so no family
 * field is needed (5.10 has none).
 *
 * Counts per local address:
 *   retrans_rows     per-CPU array indexed by row, for addresses that have a row
 *                    (addr_rows.bpf.h): no cache line shared between CPUs
 *   retrans_by_addr  hash {address} -> count, for addresses that found no row; bounded by
 *                    RETRANS_MAX_ENTRIES, an event that finds it full is counted in lost_events
 */
#include "common.h"
#include "lost.bpf.h"
#include "addr_rows.bpf.h"

BPF_PERCPU_ARRAY(retrans_rows, u64, ADDR_ROWS);
BPF_HASH(retrans_by_addr, struct addr_key, u64, RETRANS_MAX_ENTRIES);

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    union addr16 a = {};
    __builtin_memcpy(a.k.addr, args->saddr_v6, 16);

    u32 row = addr_row(&a);
    if (row != ADDR_SPILL) {
        int idx = row;
        u64 *n = retrans_rows.lookup(&idx);
        if (n)
            (*n)++;
        return 0;
    }
    u64 zero = 0;
    u64 *v = retrans_by_addr.lookup_or_try_init(&a.k, &zero);
    if (!v) {
        count_lost();
        return 0;
    }
    __sync_fetch_and_add(v, 1);
    return 0;
}
