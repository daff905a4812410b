/* Included by BCC's copy of the BPF uAPI; its opcode macros are not used. See linux/kconfig.h. */
