/* Stochastic draws for the CPU kernels (float_matmul.c, fixed_accumulate.c): 32 random
 * bits per (row, column, k, rounding site) or per (element, rounding site) from a
 * counter-based hash (murmur3's finaliser, twice) keyed by the call's seed (from torch's
 * generator) and the row. */
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
/* fixed_accumulate.c's keys and draws.  A tile's row r (r counted over all of a call's
 * groups) and its column block starting at j0 get one key; within it tile_draw hashes
 * the counter a * b + c in 32-bit arithmetic (which gcc vectorises; the caller keeps it
 * below 2**32).  Pointwise steps: element t and rounding site (< 8) of a call. */
static inline uint32_t tile_key(uint64_t seed, int64_t r, int64_t j0) {
    return mix32((uint32_t)seed ^ mix32((uint32_t)r ^ mix32((uint32_t)j0 ^ (uint32_t)(seed >> 32))));
}
static inline uint32_t tile_draw(uint32_t key, uint32_t a, uint32_t b, uint32_t c) {
    return mix32(mix32(a * b + c) ^ key);
}
static inline uint32_t elem_draw(uint64_t seed, int64_t t, int site) {
    const uint32_t c = (uint32_t)t * 8u + (uint32_t)site; /* unique below 2**29 elements; t's high bits join the key */
    return mix32(mix32(c ^ (uint32_t)seed) ^ (uint32_t)(seed >> 32) ^ (uint32_t)(t >> 29) * 0x9e3779b9u);
}
#endif
