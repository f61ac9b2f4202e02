/*
 * virtq_fuzz.c - libFuzzer target for the split virtqueue walker: the input becomes a queue's
 * configuration and the guest memory its rings live in; the walker pops and pushes until the
 * guest has nothing more or breaks the ring. It must never crash, read or write outside guest
 * memory, or loop more than the queue size per chain (ASan and UBSan watch; a hang is a timeout).
 *
 * Input: byte 0 = log2 of the queue size (mod 9), byte 1 bit 0 = indirect descriptors,
 * bit 1 = event idx; then up to 64 KiB copied over guest memory from the descriptor table on
 * (table at 0, avail ring at 0x1000, used ring at 0x2000, buffers anywhere in 64 KiB).
 */
#include <stdint.h>
#include <string.h>
#include "internal.h"
#include "devices/virtq.h"

#define MEM (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct guest_mem mem;
    static struct vq_chain chain;
    if (!mem.base) {
        uint64_t gpa = 0, len = MEM;
        if (mem_alloc(&mem, &gpa, &len, 1, VMM_MEM_ANON))
            return 0;
    }
    if (size < 2)
        return 0;
    memset(mem.base, 0, MEM);
    size_t n = size - 2 < MEM ? size - 2 : MEM;
    memcpy(mem.base, data + 2, n);
    struct virtq q = {.mem = &mem, .num = (uint16_t)(1u << (data[0] % 9)), .desc = 0,
                      .avail = 0x1000, .used = 0x2000, .indirect = data[1] & 1,
                      .event_idx = data[1] & 2};
    if (virtq_check(&q, VIRTQ_MAX_SIZE))
        return 0;
    for (int i = 0; i < 2 * VIRTQ_MAX_SIZE; i++) {
        int r = virtq_pop(&q, &chain);
        if (r <= 0)
            break;
        uint8_t buf[512];
        int64_t got = vq_chain_read(&mem, &chain, 0, buf, sizeof(buf));
        if (got >= 0)
            vq_chain_write(&mem, &chain, 3, buf, (uint64_t)got);
        if (virtq_push(&q, chain.head, (uint32_t)chain.wlen))
            break;
        virtq_should_notify(&q);
    }
    return 0;
}
