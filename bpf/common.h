/* Shared definitions for the probes in this folder.
 *
 * RULE: probes read tracepoint arguments only (BCC takes their layout from the running
 * kernel's tracefs format files) and never dereference a kernel struct. That is what makes it
 * safe to compile against a header tree from another kernel version when the node has none of
 * its own (see scripts/dev-setup.sh and README "Kernel headers").
 */
#ifndef EBPF_EDGE_COMMON_H
#define EBPF_EDGE_COMMON_H

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* A local address as 16 bytes: IPv6 as is, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so an
 * IPv4 flow seen through an IPv6 socket and through an IPv4 socket lands on the same key. */
struct addr_key {
    u8 addr[16];
};

static __always_inline void addr_from_v4(u8 *dst, const u8 *v4)
{
    dst[10] = 0xff;
    dst[11] = 0xff;
    dst[12] = v4[0];
    dst[13] = v4[1];
    dst[14] = v4[2];
    dst[15] = v4[3];
}

/* Probes with a histogram include hist.h (it needs HIST_SUB_BITS and HIST_MAX_SHIFT); probes
 * with a bounded map include lost.bpf.h for count_lost(). */

#endif
