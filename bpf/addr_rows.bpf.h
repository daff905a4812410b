/* Per-address rows, shared by tcp_rtt and tcp_retrans.
 *
 * Map calls in an ordinary header are not rewritten by BCC, so the probe loader
 * (agent/probes/base.py, load_source) pastes every #include "*.bpf.h" into the probe's text.
 * Include it after common.h, with ADDR_ROWS and ADDR_SPILL_ADDRS defined.
 *
 * The first ADDR_ROWS local addresses seen each get a row of the probe's own plain array. A row
 * is found through a small per-CPU direct-mapped cache (ADDR_CACHE_SLOTS entries, indexed by a
 * hash of the address), so the common event costs two array lookups and no hash-map walk. A
 * cache miss looks the address up in addr_row_of (address -> row). A new address claims a free
 * row by inserting into addr_row_owner (row -> address, BPF_NOEXIST: two CPUs never share a
 * row), then into addr_row_of (BPF_NOEXIST: an address never gets two rows). Rows are never
 * freed while the probe is loaded, so a cached row never goes stale. An address that finds no
 * free row among ROW_PROBES candidates is recorded in addr_row_of as ADDR_SPILL and counted in
 * the probe's slower per-address hash instead, so no event is lost while that hash has room.
 * Only plain atomics, no compare-and-swap, so the same code loads on 5.10.
 */
#ifndef ADDR_ROWS
#error "ADDR_ROWS must be defined (passed by the probe as a -D flag)"
#endif
#ifndef ADDR_SPILL_ADDRS
#error "ADDR_SPILL_ADDRS must be defined (passed by the probe as a -D flag)"
#endif

#define ADDR_SPILL 0xffffffffu
#define ROW_PROBES 8
#define ADDR_CACHE_SLOTS 64

union addr16 {
    struct addr_key k;
    u64 q[2];
};

struct addr_row_cache {
    u64 lo;
    u64 hi;
    u32 row;   /* a row, or ADDR_SPILL */
    u32 valid;
};

BPF_HASH(addr_row_of, struct addr_key, u32, ADDR_ROWS + ADDR_SPILL_ADDRS);
BPF_HASH(addr_row_owner, u32, struct addr_key, ADDR_ROWS);
BPF_PERCPU_ARRAY(addr_cache, struct addr_row_cache, ADDR_CACHE_SLOTS);

static __always_inline u64 addr_hash(const union addr16 *a)
{
    u64 h = a->q[0] ^ (a->q[1] * 0x9E3779B97F4A7C15ULL);
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    return h ^ (h >> 32);
}

static __always_inline u32 addr_claim_row(union addr16 *a, u64 hash)
{
    u32 start = (u32)(hash % ADDR_ROWS);
#pragma unroll
    for (int i = 0; i < ROW_PROBES; i++) {
        u32 row = (start + i) % ADDR_ROWS;
        if (addr_row_owner.insert(&row, &a->k) == 0) {
            if (addr_row_of.insert(&a->k, &row) == 0)
                return row;
            addr_row_owner.delete(&row);  /* another CPU gave this address a row first */
            break;
        }
    }
    u32 spill = ADDR_SPILL;
    addr_row_of.insert(&a->k, &spill);  /* fails harmlessly if a row was given meanwhile */
    u32 *got = addr_row_of.lookup(&a->k);
    return got ? *got : ADDR_SPILL;
}

/* The address's row, or ADDR_SPILL. */
static __always_inline u32 addr_row(union addr16 *a)
{
    u64 hash = addr_hash(a);
    int at = hash & (ADDR_CACHE_SLOTS - 1);
    struct addr_row_cache *c = addr_cache.lookup(&at);
    if (!c)
        return ADDR_SPILL;
    if (c->valid && c->lo == a->q[0] && c->hi == a->q[1])
        return c->row;
    u32 row;
    u32 *known = addr_row_of.lookup(&a->k);
    row = known ? *known : addr_claim_row(a, hash);
    c->lo = a->q[0];
    c->hi = a->q[1];
    c->row = row;
    c->valid = 1;
    return row;
}
