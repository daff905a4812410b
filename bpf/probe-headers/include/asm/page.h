/* Included by BCC's helpers.h; PAGE_SIZE is used only by perf-buffer maps, which no probe has.
 * See linux/kconfig.h. */
#ifndef PAGE_SIZE
#define PAGE_SIZE 4096
#endif
