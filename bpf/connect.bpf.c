/* connect: TCP connection set-up latency and failures per local address.
 *
 * sock:inet_sock_set_state fires on every state change of an inet socket (tcp_set_state and
 * inet_sk_set_state), for TCP and also for SCTP/MPTCP: only IPPROTO_TCP is counted. Its
 * saddr_v6 always holds the local address, IPv4 as IPv4-mapped (TP_STORE_ADDRS). skaddr is the
 * socket's address, used only as a number (a key), never dereferenced.
 *
 *   CLOSE -> SYN_SENT         an active open starts: its time is kept for skaddr (connect_start)
 *   SYN_SENT -> ESTABLISHED   the handshake completed: latency into connect_lat
 *   SYN_SENT -> CLOSE         the open failed before being established (refused by a RST,
 *                             timed out after the SYN retries, or aborted by the client)
 *   SYN_RECV -> ESTABLISHED   a passive open completed (the child socket of a listener)
 *
 * The address is taken at the completing transition (the source address is always chosen by
 * then). Maps:
 *   connect_start   array of CONNECT_PENDING {skaddr, ktime ns} entries, the entry chosen by a
 *                   hash of skaddr and the skaddr kept in it as its key: a start costs one array
 *                   lookup, where a hash map insert and delete cost about four times as much
 *                   (BENCHMARKS.md, 1b). A start that finds its entry still holding another
 *                   open (two pending opens on one entry, or an open whose completion was never
 *                   seen) takes it over and counts the other's sample in lost_events; a
 *                   completion whose skaddr is not in its entry gets no latency sample.
 *   connect_lat     hash {address, slot} -> {count, sum of us}, bounded by CONNECT_LAT_ENTRIES
 *   connect_counts  hash address -> {failed, passive}, bounded by CONNECT_MAX_ADDRS
 * Failures and passive opens need no start time: they are counted whatever connect_start held.
 */
#include "common.h"
#include "hist.h"
#include "lost.bpf.h"

#define CONNECT_TCP_ESTABLISHED 1
#define CONNECT_TCP_SYN_SENT 2
#define CONNECT_TCP_SYN_RECV 3
#define CONNECT_TCP_CLOSE 7
#define CONNECT_IPPROTO_TCP 6

struct connect_pending {
    u64 sk;  /* 0: free */
    u64 ts;
};

struct lat_key {
    u8 addr[16];
    u32 slot;
};

struct connect_tally {
    u64 failed;
    u64 passive;
};

BPF_ARRAY(connect_start, struct connect_pending, CONNECT_PENDING);
BPF_HASH(connect_lat, struct lat_key, struct hist_value, CONNECT_LAT_ENTRIES);
BPF_HASH(connect_counts, struct addr_key, struct connect_tally, CONNECT_MAX_ADDRS);

static __always_inline struct connect_pending *pending_of(u64 sk)
{
    int i = (int)(((sk * 0x9E3779B97F4A7C15ULL) >> 32) % CONNECT_PENDING);
    return connect_start.lookup(&i);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != CONNECT_IPPROTO_TCP)
        return 0;
    int oldstate = args->oldstate, newstate = args->newstate;
    u64 sk = (u64)args->skaddr;

    if (newstate == CONNECT_TCP_SYN_SENT) {
        struct connect_pending *e = pending_of(sk);
        if (!e)
            return 0;
        if (e->sk)
            count_lost();  /* another open's start, never completed or not yet: its sample */
        e->sk = sk;
        e->ts = bpf_ktime_get_ns();
        return 0;
    }

    int done_active = oldstate == CONNECT_TCP_SYN_SENT;
    int passive = oldstate == CONNECT_TCP_SYN_RECV && newstate == CONNECT_TCP_ESTABLISHED;
    if (!done_active && !passive)
        return 0;

    struct addr_key a = {};
    __builtin_memcpy(a.addr, args->saddr_v6, 16);

    if (done_active) {
        struct connect_pending *e = pending_of(sk);
        u64 t0 = 0;
        if (e && e->sk == sk) {
            t0 = e->ts;
            e->sk = 0;
        }
        if (newstate == CONNECT_TCP_ESTABLISHED) {
            if (!t0)
                return 0;  /* started before the probe was attached, or its entry taken over */
            u64 us = (bpf_ktime_get_ns() - t0) / 1000;
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
