/* The BPF uAPI: BCC's own copy, built into libbcc. See linux/kconfig.h. */
#include <bcc/bpf.h>
