/*
 * memory.h — allocation of large buffers that are read whole and often: merged and converted
 * weights (every decoded token reads each once), the decoder's KV cache.
 * Not a general allocator: small or short-lived buffers use malloc.
 */
#ifndef LORA_CORE_MEMORY_H
#define LORA_CORE_MEMORY_H

#include <stddef.h>

/*
 * bytes of uninitialised memory, released with free(); NULL when out of memory. From 2 MiB
 * up the block is 2 MiB aligned and advised to be backed by transparent huge pages, so that
 * streaming it costs no 4 KiB page walks (in a virtual machine a walk is costly enough to take
 * a third of the bandwidth). The advice is a hint: where the kernel ignores it, the memory is
 * ordinary.
 */
void *lora_alloc_streamed(size_t bytes);

#endif
