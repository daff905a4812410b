/* The probe passes the running kernel's LINUX_VERSION_CODE with -D; KERNEL_VERSION as the
 * kernel defines it (a, b, c -> one integer). See linux/kconfig.h. */
#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))
#ifndef LINUX_VERSION_CODE
#define LINUX_VERSION_CODE 0
#endif
