/* struct sockaddr_in6, which the tcp_probe format of older kernels sizes its address fields
 * with (__u8 saddr[sizeof(struct sockaddr_in6)]): the 28-byte userspace ABI layout. */
#ifndef EEA_PROBE_IN6_H
#define EEA_PROBE_IN6_H
struct in6_addr {
    __u8 s6_addr[16];
};
struct sockaddr_in6 {
    unsigned short sin6_family;
    __be16 sin6_port;
    __be32 sin6_flowinfo;
    struct in6_addr sin6_addr;
    __u32 sin6_scope_id;
};
#endif
