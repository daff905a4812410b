/* connect: TCP connection set-up latency and failures per local address.
 *
 * sock:inet_sock_set_state fires on every state change of an inet socket (tcp_set_state and
 * inet_sk_set_state), for TCP and also for SCTP/MPTCP: only IPPROTO_TCP is counted. Its
 * saddr_v6 always holds the local address, IPv4 as IPv4-mapped (TP_STORE_ADDRS). skaddr is the
 * socket's address, used only as a number (a map key), never dereferenced.
 *
 *   CLOSE -> SYN_SENT         an active open starts: skaddr -> time (connect_start)
 *   SYN_SENT -> ESTABLISHED   the handshake completed: latency into connect_lat
 *   SYN_SENT -> CLOSE         the open failed before being established (refused by a RST,
 *                             timed out after the SYN retries, or aborted by the client)
 *   SYN_RECV -> ESTABLISHED   a passive open completed (the child socket of a listener)
 *
 * The address is taken at the completing transition (the source address is always chosen by
 * then). Maps:
 *   connect_start   hash skaddr -> ktime ns of SYN_SENT, bounded by CONNECT_PENDING; a start
 *                   that finds it full, or an entry found stale (the socket's memory reused
 *                   for a new open without a completion seen), is counted in lost_events
 *   connect_lat     hash {address, slot} -> {count, sum of us}, bounded by CONNECT_LAT_ENTRIES
 *   connect_counts  hash address -> {failed, passive}, bounded by CONNECT_MAX_ADDRS
 */
#include "common.h"
#include "hist.h"
#include "lost.bpf.h"

#define CONNECT_TCP_ESTABLISHED 1
#define CONNECT_TCP_SYN_SENT 2
#define CONNECT_TCP_SYN_RECV 3
#define CONNECT_TCP_CLOSE 7
#define CONNECT_IPPROTO_TCP 6
#define CONNECT_EEXIST 17  /* errno-base.h */

struct lat_key {
    u8 addr[16];
    u32 slot;
};

struct connect_tally {
    u64 failed;
    u64 passive;
};

BPF_HASH(connect_start, u64, u64, CONNECT_PENDING);
BPF_HASH(connect_lat, struct lat_key, struct hist_value, CONNECT_LAT_ENTRIES);
BPF_HASH(connect_counts, struct addr_key, struct connect_tally, CONNECT_MAX_ADDRS);

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != CONNECT_IPPROTO_TCP)
        return 0;
    int oldstate = args->oldstate, newstate = args->newstate;
    u64 sk = (u64)args->skaddr;

    if (newstate == CONNECT_TCP_SYN_SENT) {
        u64 now = bpf_ktime_get_ns();
        int err = connect_start.insert(&sk, &now);  /* one hash operation on the common path */
        if (err) {
            count_lost();  /* full (no latency sample), or a start whose completion was never seen */
            if (err == -CONNECT_EEXIST)
                connect_start.update(&sk, &now);
        }
        return 0;
    }

    int done_active = oldstate == CONNECT_TCP_SYN_SENT;
    int passive = oldstate == CONNECT_TCP_SYN_RECV && newstate == CONNECT_TCP_ESTABLISHED;
    if (!done_active && !passive)
        return 0;

    struct addr_key a = {};
    __builtin_memcpy(a.addr, args->saddr_v6, 16);

    if (done_active && newstate == CONNECT_TCP_ESTABLISHED) {
        u64 *t0 = connect_start.lookup(&sk);
        if (!t0)
            return 0;  /* started before the probe was attached */
        u64 us = (bpf_ktime_get_ns() - *t0) / 1000;
        connect_start.delete(&sk);
        struct lat_key key = {};
        __builtin_memcpy(key.addr, a.addr, 16);
        key.slot = hist_slot(us);
        struct hist_value zero = {};
        struct hist_value *v = connect_lat.lookup_or_try_init(&key, &zero);
        if (!v) {
            count_lost();
            return 0;
        }
        __sync_fetch_and_add(&v->count, 1);
        __sync_fetch_and_add(&v->sum, us);
        return 0;
    }
    if (done_active) {
        connect_start.delete(&sk);
        if (newstate != CONNECT_TCP_CLOSE)
            return 0;  /* SYN_SENT -> SYN_RECV: a simultaneous open, neither */
    }

    struct connect_tally zero = {};
    struct connect_tally *c = connect_counts.lookup_or_try_init(&a, &zero);
    if (!c) {
        count_lost();
        return 0;
    }
    if (passive)
        __sync_fetch_and_add(&c->passive, 1);
    else
        __sync_fetch_and_add(&c->failed, 1);
    return 0;
}
