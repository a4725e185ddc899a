/* Files built into the library, so it needs no data file at run time.
 * AP_EMBED_FILE(sym, "path") puts the file's bytes in .rodata with .incbin (read
 * by the assembler at build time) between the hidden symbols sym and sym_end;
 * the build passes each path as a define. Use at file scope. */
#ifndef AP_CORE_EMBED_H
#define AP_CORE_EMBED_H

#include <stddef.h>

#define AP_EMBED_FILE(sym, path)                                                                   \
    __asm__(".pushsection .rodata." #sym ",\"a\",@progbits\n"                                      \
            ".balign 64\n"                                                                         \
            ".globl " #sym "\n.hidden " #sym "\n" #sym ":\n"                                       \
            ".incbin \"" path "\"\n"                                                               \
            ".globl " #sym "_end\n.hidden " #sym "_end\n" #sym "_end:\n"                           \
            ".popsection\n");                                                                      \
    extern const unsigned char sym[] __attribute__((visibility("hidden")));                        \
    extern const unsigned char sym##_end[] __attribute__((visibility("hidden")))

/* The size of an embedded file. */
#define AP_EMBED_SIZE(sym) ((size_t)(sym##_end - sym))

#endif
