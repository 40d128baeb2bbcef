/*
 * test_memory.c — lora_alloc_streamed (src/core/memory.h): small blocks are plain and usable,
 * blocks from 2 MiB up are 2 MiB aligned, usable end to end, and (where the kernel has
 * transparent huge pages) advised to them: their mapping carries the "hg" flag in
 * /proc/self/smaps.
 */
#include "core/memory.h"
#include "test_helper.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* 1 when the mapping holding p has VM_HUGEPAGE ("hg" in VmFlags), 0 when not, -1 unknown. */
static int advised_huge(const void *p) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char      line[512];
    int       in = 0, found = -1;
    uintptr_t a  = (uintptr_t)p;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
            in = a >= lo && a < hi;
            continue;
        }
        if (in && !strncmp(line, "VmFlags:", 8)) {
            found = strstr(line, " hg") != NULL;
            break;
        }
    }
    fclose(f);
    return found;
}

static void test_size(size_t bytes) {
    unsigned char *p = lora_alloc_streamed(bytes);
    test_condf(p != NULL, "lora_alloc_streamed(%zu) returned NULL", bytes);
    if (!p) return;
    if (bytes) {
        memset(p, 0xA5, bytes);
        test_condf(p[0] == 0xA5 && p[bytes - 1] == 0xA5, "%zu bytes: not usable end to end",
                   bytes);
    }
    if (bytes >= ((size_t)2 << 20)) {
        test_condf((uintptr_t)p % ((size_t)2 << 20) == 0, "%zu bytes: not 2 MiB aligned", bytes);
        int thp = access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
        int hg  = advised_huge(p);
        if (thp && hg >= 0)
            test_condf(hg == 1, "%zu bytes: the mapping is not advised to huge pages", bytes);
    }
    free(p);
}

int main(void) {
    size_t sizes[] = {0, 1, 100, 4096, ((size_t)2 << 20) - 1, (size_t)2 << 20,
                      ((size_t)3 << 20) + 5, (size_t)20 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) test_size(sizes[i]);
    return test_report("test_memory");
}
