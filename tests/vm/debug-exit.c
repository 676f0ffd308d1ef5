/* Hands the vmtest guest's verdict to QEMU: writes argv[1] (0 = pass, 1 = fail) to the isa-debug-exit port,
 * which makes QEMU exit with (value << 1) | 1. The guest kernel has no /dev/port (CONFIG_DEVPORT is off in
 * Debian's cloud kernel), so this takes the port with ioperm and does the outb itself. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

#define DEBUG_EXIT_PORT 0xf4 /* -device isa-debug-exit,iobase=0xf4,iosize=0x04 in tests/vm/run.sh */

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: debug-exit 0|1\n");
        return 2;
    }
    if (ioperm(DEBUG_EXIT_PORT, 4, 1) != 0) {
        perror("debug-exit: ioperm");
        return 1;
    }
    outb((unsigned char)atoi(argv[1]), DEBUG_EXIT_PORT);
    fprintf(stderr, "debug-exit: QEMU did not exit\n");
    return 1;
}
