/* Stochastic draws for the CPU kernels (float_matmul.c, fixed_accumulate.c): 32 random
 * bits per (row, column, k, rounding site) from a counter-based hash (murmur3's
 * finaliser, twice) keyed by the call's seed (from torch's generator) and the row. */
#ifndef QLAB_DRAWS_H
#define QLAB_DRAWS_H
#include <stdint.h>

static inline uint32_t mix32(uint32_t h) {
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    return h;
}
static inline uint32_t row_key(uint64_t seed, int64_t r) {
    return mix32((uint32_t)seed ^ mix32((uint32_t)r ^ (uint32_t)(seed >> 32)));
}
static inline uint32_t draw(uint32_t key, int64_t c, int64_t k1, int64_t k, int site) {
    return mix32(mix32((uint32_t)(((uint64_t)c * (uint64_t)k1 + (uint64_t)k) * 8u + (uint64_t)site)) ^ key);
}
#endif
