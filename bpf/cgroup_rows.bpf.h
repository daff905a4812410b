/* Per-cgroup rows: the first CGROUP_ROWS cgroup ids seen each get a row of the probe's array.
 *
 * Like addr_rows.bpf.h (pasted into the probe's text by agent/probes/base.py, load_source, so
 * BCC rewrites its map calls). A cgroup id is the cgroup v2 directory's inode number, what
 * bpf_get_current_cgroup_id() returns for the current task; user space maps ids to pods by the
 * inodes the cgroup reader records.
 *
 * A row is found through a per-CPU direct-mapped cache (CGROUP_CACHE_SLOTS entries, indexed
 * by a hash of the id) that the probe keeps in its own per-CPU state (so the cache costs no
 * map lookup of its own): the common event costs one compare. A miss looks
 * the id up in cgroup_row_of (id -> row). A new id claims a free row by inserting into
 * cgroup_row_owner (row -> id, BPF_NOEXIST: two CPUs never share a row), then into
 * cgroup_row_of (BPF_NOEXIST: an id never gets two rows). An id that finds no free row among
 * CGROUP_ROW_PROBES candidates is remembered in cgroup_row_of as CGROUP_NO_ROW (room for as
 * many of those as there are rows), so later misses cost one lookup; its events are the
 * probe's to count as lost. Rows are never freed while the probe is loaded, so a cached row
 * never goes stale. Only plain atomics, no compare-and-swap (loads on 5.10).
 */
#ifndef CGROUP_ROWS
#error "CGROUP_ROWS must be defined (passed by the probe as a -D flag)"
#endif

#define CGROUP_NO_ROW 0xffffffffu
#define CGROUP_ROW_PROBES 16
#define CGROUP_CACHE_SLOTS 64

struct cgroup_row_cache {
    u64 id;
    u32 row;   /* a row, or CGROUP_NO_ROW */
    u32 valid;
};

BPF_HASH(cgroup_row_of, u64, u32, 2 * CGROUP_ROWS);
BPF_HASH(cgroup_row_owner, u32, u64, CGROUP_ROWS);

static __always_inline u64 cgroup_hash(u64 id)
{
    u64 h = id * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

static __always_inline u32 cgroup_claim_row(u64 id, u64 hash)
{
    u32 start = (u32)((hash >> 8) % CGROUP_ROWS);
#pragma unroll
    for (int i = 0; i < CGROUP_ROW_PROBES; i++) {
        u32 row = (start + i) % CGROUP_ROWS;
        if (cgroup_row_owner.insert(&row, &id) == 0) {
            if (cgroup_row_of.insert(&id, &row) == 0)
                return row;
            cgroup_row_owner.delete(&row);  /* another CPU gave this id a row first */
            break;
        }
    }
    u32 none = CGROUP_NO_ROW;
    cgroup_row_of.insert(&id, &none);  /* fails harmlessly if a row was given meanwhile */
    u32 *got = cgroup_row_of.lookup(&id);
    return got ? *got : CGROUP_NO_ROW;
}

/* The cgroup's row, or CGROUP_NO_ROW; ``cache``: this CPU's CGROUP_CACHE_SLOTS entries. */
static __always_inline u32 cgroup_row(u64 id, struct cgroup_row_cache *cache)
{
    u64 hash = cgroup_hash(id);
    struct cgroup_row_cache *c = &cache[hash & (CGROUP_CACHE_SLOTS - 1)];
    if (c->valid && c->id == id)
        return c->row;
    u32 *known = cgroup_row_of.lookup(&id);
    u32 row = known ? *known : cgroup_claim_row(id, hash);
    c->id = id;
    c->row = row;
    c->valid = 1;
    return row;
}
