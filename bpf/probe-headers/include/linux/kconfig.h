/* The probes' own header tree (BCC_KERNEL_SOURCE for the compiling child): just what BCC's
 * built-in helpers.h and our programs include, and nothing of any kernel's internals.
 *
 * Our programs read only tracepoint fields, whose layout BCC takes from the running kernel's
 * format files, never from headers; so the kernel's own header tree (tens of MB, of one kernel
 * version, parsed three times per compile) is not needed to build them, and this tree compiles
 * them to the same instructions (tests/bpf/test_compile_child.py compares them) in a fraction
 * of the time. BCC force-includes this file first. */
#define CONFIG_BPF_SYSCALL 1
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
