/* Included by BCC's helpers.h; none of its contents are used. See linux/kconfig.h. */
