/* tcp_rtt: smoothed RTT of TCP connections, sampled on ACK processing.
 *
 * tcp:tcp_probe fires from tcp_rcv_established(), the path that runs tcp_ack(); its srtt field
 * is tp->srtt_us >> 3, i.e. microseconds. It fires for every incoming segment, so a sample is
 * kept only while the socket has data in flight (snd_nxt != snd_una): only then can the
 * segment carry an ACK that measures RTT. A pure receiver's srtt is a stale value from the
 * handshake and would otherwise be sampled once per received data segment.
 * saddr/daddr hold a struct sockaddr_in or
 * sockaddr_in6 whose first two bytes are the address family (true on every kernel, including
 * those whose tracepoint has no separate "family" field).
 *
 * Histograms per local address:
 *   rtt_rows     array of counts, row * HIST_SLOTS + slot, for addresses that have a row
 *                (addr_rows.bpf.h); mmap-able, so user space reads the rows in use without a
 *                syscall per slot
 *   rtt_row_sum  per-CPU array, row -> sum of srtt in us (one atomic per event, not two)
 *   rtt_hist     hash {address, slot} -> {count, sum} for addresses that found no row; bounded
 *                by RTT_MAX_ENTRIES, an event that finds it full is counted in lost_events
 */
#include <linux/in6.h>
#include "common.h"
#include "hist.h"
#include "lost.bpf.h"
#include "addr_rows.bpf.h"

struct rtt_key {
    u8 addr[16];
    u32 slot;
};

BPF_F_TABLE("array", int, u64, rtt_rows, ADDR_ROWS * HIST_SLOTS, BPF_F_MMAPABLE);
BPF_PERCPU_ARRAY(rtt_row_sum, u64, ADDR_ROWS);
BPF_HASH(rtt_hist, struct rtt_key, struct hist_value, RTT_MAX_ENTRIES);

TRACEPOINT_PROBE(tcp, tcp_probe)
{
    if (args->snd_nxt == args->snd_una)
        return 0;
    union addr16 a;
    u16 family = *(u16 *)&args->saddr[0];

#ifdef SADDR_ALIGNED
    /* Whole-word loads from the tracepoint record (saddr starts 8-byte aligned, checked by
     * agent/probes/tcp_rtt.py), building the IPv4-mapped form directly (little-endian words):
     * no byte copies, and no byte stores read back as words. */
    if (family == AF_INET) {
        /* struct sockaddr_in: family(2) port(2) addr(4) */
        a.q[0] = 0;
        a.q[1] = 0xffff0000ULL | ((u64)*(u32 *)&args->saddr[4] << 32);
    } else if (family == AF_INET6) {
        /* struct sockaddr_in6: family(2) port(2) flowinfo(4) addr(16) */
        a.q[0] = *(u64 *)&args->saddr[8];
        a.q[1] = *(u64 *)&args->saddr[16];
    } else {
        return 0;
    }
#else
    a.q[0] = a.q[1] = 0;
    if (family == AF_INET)
        addr_from_v4(a.k.addr, &args->saddr[4]);
    else if (family == AF_INET6)
        __builtin_memcpy(a.k.addr, &args->saddr[8], 16);
    else
        return 0;
#endif

    u64 srtt_us = args->srtt;
    u32 slot = hist_slot(srtt_us);
    u32 row = addr_row(&a);
    if (row != ADDR_SPILL) {
        int idx = row * HIST_SLOTS + slot;
        u64 *n = rtt_rows.lookup(&idx);
        int r = row;
        u64 *sum = rtt_row_sum.lookup(&r);
        if (!n || !sum) {
            count_lost();
            return 0;
        }
        __sync_fetch_and_add(n, 1);
        *sum += srtt_us;  /* per CPU: no atomic needed */
        return 0;
    }
    struct rtt_key key = {};
    __builtin_memcpy(key.addr, a.k.addr, 16);
    key.slot = slot;
    struct hist_value zero = {};
    struct hist_value *v = rtt_hist.lookup_or_try_init(&key, &zero);
    if (!v) {
        count_lost();
        return 0;
    }
    __sync_fetch_and_add(&v->count, 1);
    __sync_fetch_and_add(&v->sum, srtt_us);
    return 0;
}
