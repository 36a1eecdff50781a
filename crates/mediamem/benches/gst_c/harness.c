/* GStreamer's side of the comparison benchmark (benches/compare.rs), in C.
 *
 * Each mmb_* function sets up what it needs, runs `n` iterations of one
 * operation against libgstreamer / libgstallocators directly, tears down,
 * and returns the elapsed nanoseconds of the loop alone (0 on failure), so
 * that one FFI call is amortised over the whole batch. The floors (atomic
 * instructions, syscalls, memset, memcpy) are here too, so that every
 * reference is measured by the same compiler and in the same run.
 *
 * Built by crates/mediamem/build.rs only with the `compare-gstreamer`
 * feature. Written against GStreamer's public API only. */

#define _GNU_SOURCE
#include <gst/gst.h>
#include <gst/allocators/allocators.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Results go here so that no loop can be optimised away. */
static volatile uintptr_t mmb_sink;

#define BARRIER() __asm__ volatile("" ::: "memory")

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const char *mmb_gst_version(void) {
    return gst_version_string();
}

int mmb_init(void) {
    return gst_init_check(NULL, NULL, NULL) ? 1 : 0;
}

/* gst_allocator_alloc (default, system memory) + map WRITE + unmap + unref. */
uint64_t mmb_alloc_map_free(uint64_t n, size_t size) {
    GstMapInfo info;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        GstMemory *m = gst_allocator_alloc(NULL, size, NULL);
        if (!m || !gst_memory_map(m, &info, GST_MAP_WRITE))
            return 0;
        mmb_sink = (uintptr_t)info.data;
        gst_memory_unmap(m, &info);
        gst_memory_unref(m);
    }
    return now_ns() - t0;
}

/* The same, writing every visible byte while mapped. */
uint64_t mmb_alloc_fill_free(uint64_t n, size_t size) {
    GstMapInfo info;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        GstMemory *m = gst_allocator_alloc(NULL, size, NULL);
        if (!m || !gst_memory_map(m, &info, GST_MAP_WRITE))
            return 0;
        memset(info.data, (int)(i & 0xff), info.size);
        mmb_sink = (uintptr_t)info.data;
        gst_memory_unmap(m, &info);
        gst_memory_unref(m);
    }
    return now_ns() - t0;
}

static uint64_t map_loop(GstMemory *m, uint64_t n, GstMapFlags flags) {
    GstMapInfo info;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        if (!gst_memory_map(m, &info, flags))
            return 0;
        if (flags & GST_MAP_WRITE)
            info.data[0] = (guint8)i;
        mmb_sink = (uintptr_t)info.data;
        gst_memory_unmap(m, &info);
    }
    return now_ns() - t0;
}

/* map READ + unmap of one 4 KiB system memory. */
uint64_t mmb_map_read(uint64_t n) {
    GstMemory *m = gst_allocator_alloc(NULL, 4096, NULL);
    uint64_t t = m ? map_loop(m, n, GST_MAP_READ) : 0;
    if (m)
        gst_memory_unref(m);
    return t;
}

/* map WRITE (one byte written) + unmap of one 4 KiB system memory. */
uint64_t mmb_map_write(uint64_t n) {
    GstMemory *m = gst_allocator_alloc(NULL, 4096, NULL);
    uint64_t t = m ? map_loop(m, n, GST_MAP_WRITE) : 0;
    if (m)
        gst_memory_unref(m);
    return t;
}

/* map READ + unmap of a READONLY wrapped 4 KiB memory. */
uint64_t mmb_map_readonly(uint64_t n) {
    static guint8 bytes[4096];
    GstMemory *m = gst_memory_new_wrapped(GST_MEMORY_FLAG_READONLY, bytes,
                                          sizeof bytes, 0, sizeof bytes, NULL, NULL);
    uint64_t t = m ? map_loop(m, n, GST_MAP_READ) : 0;
    if (m)
        gst_memory_unref(m);
    return t;
}

/* gst_memory_share(mem, 100, 100) + unref, of a 1 MiB system memory. */
uint64_t mmb_share_unref(uint64_t n) {
    GstMemory *m = gst_allocator_alloc(NULL, 1 << 20, NULL);
    if (!m)
        return 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        GstMemory *s = gst_memory_share(m, 100, 100);
        if (!s)
            return 0;
        mmb_sink = (uintptr_t)s;
        gst_memory_unref(s);
    }
    uint64_t t = now_ns() - t0;
    gst_memory_unref(m);
    return t;
}

/* gst_memory_copy(mem, 0, size) + unref, of a 1 MiB system memory. */
uint64_t mmb_copy(uint64_t n, size_t size) {
    GstMemory *m = gst_allocator_alloc(NULL, 1 << 20, NULL);
    if (!m)
        return 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        GstMemory *c = gst_memory_copy(m, 0, (gssize)size);
        if (!c)
            return 0;
        mmb_sink = (uintptr_t)c;
        gst_memory_unref(c);
    }
    uint64_t t = now_ns() - t0;
    gst_memory_unref(m);
    return t;
}

/* GstBufferPool of 4 KiB buffers (min 4, max 4): acquire + release. */
uint64_t mmb_pool(uint64_t n) {
    GstBufferPool *pool = gst_buffer_pool_new();
    GstStructure *config = gst_buffer_pool_get_config(pool);
    gst_buffer_pool_config_set_params(config, NULL, 4096, 4, 4);
    uint64_t t = 0;
    if (gst_buffer_pool_set_config(pool, config) && gst_buffer_pool_set_active(pool, TRUE)) {
        uint64_t t0 = now_ns();
        for (uint64_t i = 0; i < n; i++) {
            GstBuffer *b = NULL;
            if (gst_buffer_pool_acquire_buffer(pool, &b, NULL) != GST_FLOW_OK)
                break;
            mmb_sink = (uintptr_t)b;
            gst_buffer_unref(b);
            if (i + 1 == n)
                t = now_ns() - t0;
        }
        gst_buffer_pool_set_active(pool, FALSE);
    }
    gst_object_unref(pool);
    return t;
}

/* map READ + unmap of a 4 KiB memfd wrapped as fd memory, KEEP_MAPPED. */
uint64_t mmb_fd_keep_mapped_map(uint64_t n) {
    int fd = memfd_create("mmb", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (ftruncate(fd, 4096) != 0) {
        close(fd);
        return 0;
    }
    GstAllocator *alloc = gst_fd_allocator_new();
    GstMemory *m = gst_fd_allocator_alloc(alloc, fd, 4096, GST_FD_MEMORY_FLAG_KEEP_MAPPED);
    uint64_t t = m ? map_loop(m, n, GST_MAP_READ) : 0;
    if (m)
        gst_memory_unref(m); /* closes fd */
    else
        close(fd);
    gst_object_unref(alloc);
    return t;
}

/* ---- floors ---- */

static uint64_t word;

/* Two compare-and-swaps: what a lock word's lock and unlock cost at least. */
uint64_t mmb_floor_2cas(uint64_t n) {
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = __atomic_load_n(&word, __ATOMIC_RELAXED);
        __atomic_compare_exchange_n(&word, &v, v + 0x101, 1, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
        v = __atomic_load_n(&word, __ATOMIC_RELAXED);
        __atomic_compare_exchange_n(&word, &v, v - 0x101, 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    }
    return now_ns() - t0;
}

/* Two fetch-and-adds (lock xadd), results used. */
uint64_t mmb_floor_2xadd(uint64_t n) {
    uint64_t acc = 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        acc += __atomic_fetch_add(&word, 0x101, __ATOMIC_ACQUIRE);
        acc += __atomic_fetch_sub(&word, 0x101, __ATOMIC_RELEASE);
    }
    uint64_t t = now_ns() - t0;
    mmb_sink = acc;
    return t;
}

/* memfd_create + ftruncate + mmap + munmap + close. */
uint64_t mmb_floor_memfd(uint64_t n, size_t size) {
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        int fd = memfd_create("floor", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t)size) != 0)
            return 0;
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
            return 0;
        mmb_sink = (uintptr_t)p;
        munmap(p, size);
        close(fd);
    }
    return now_ns() - t0;
}

/* memset of `size` bytes (a block kept warm in cache if it fits). */
uint64_t mmb_floor_memset(uint64_t n, size_t size) {
    unsigned char *buf = aligned_alloc(64, (size + 63) & ~(size_t)63);
    if (!buf)
        return 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        memset(buf, (int)(i & 0xff), size);
        BARRIER();
    }
    uint64_t t = now_ns() - t0;
    mmb_sink = buf[size - 1];
    free(buf);
    return t;
}

/* memcpy of `size` bytes between two blocks. */
uint64_t mmb_floor_memcpy(uint64_t n, size_t size) {
    unsigned char *a = aligned_alloc(64, (size + 63) & ~(size_t)63);
    unsigned char *b = aligned_alloc(64, (size + 63) & ~(size_t)63);
    if (!a || !b) {
        free(a);
        free(b);
        return 0;
    }
    memset(a, 1, size);
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        memcpy(b, a, size);
        BARRIER();
    }
    uint64_t t = now_ns() - t0;
    mmb_sink = b[size - 1];
    free(a);
    free(b);
    return t;
}
