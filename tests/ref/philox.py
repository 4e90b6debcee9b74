"""Philox4x32-10 and the ldmc stream layout (src/core/rng.h), in numpy, for reference data.

An independent implementation: the tests that read data made with it fail unless it and
src/core/rng.c agree bit for bit.
"""
import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = np.uint64(0xFFFFFFFF)


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Vectorized over the counter words (uint64 arrays holding 32-bit values)."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & MASK for c in (c0, c1, c2, c3))
    k0, k1 = int(k0) & 0xFFFFFFFF, int(k1) & 0xFFFFFFFF
    for _ in range(10):
        p0 = M0 * c0
        p1 = M1 * c2
        n0 = (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0)
        n2 = (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1)
        c1 = p1 & MASK
        c3 = p0 & MASK
        c0, c2 = n0, n2
        k0 = (k0 + W0) & 0xFFFFFFFF
        k1 = (k1 + W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def stream_bits(seed, n, offset=0, step=0, rank=0, purpose=0):
    """Values offset .. offset+n-1 of the stream keyed by (seed, step, rank, purpose), as uint32."""
    i = np.arange(offset, offset + n, dtype=np.uint64)
    block = i >> np.uint64(2)
    lanes = philox4x32_10(block & MASK, block >> np.uint64(32),
                          np.full_like(block, step), np.full_like(block, (rank << 16) | purpose),
                          seed & 0xFFFFFFFF, seed >> 32)
    out = np.choose((i & np.uint64(3)).astype(np.int64), lanes)
    return out.astype(np.uint32)


def signed_uniform(seed, n, offset=0, purpose=0):
    """((bits >> 8) - 2^23) * 2^-23 in [-1, 1), exact in float32 (rng.h)."""
    m = (stream_bits(seed, n, offset, purpose=purpose) >> np.uint32(8)).astype(np.int64) - (1 << 23)
    return (m.astype(np.float64) * 2.0 ** -23).astype(np.float32)


def uniform(seed, n, offset=0, step=0, rank=0, purpose=0):
    """(bits >> 8) * 2^-24 in [0, 1) (rng.h)."""
    b = stream_bits(seed, n, offset, step, rank, purpose) >> np.uint32(8)
    return (b.astype(np.float64) * 2.0 ** -24).astype(np.float32)


def normal(seed, n, offset=0, step=0, rank=0, purpose=0):
    """Box-Muller on uniform(i & ~1), uniform(i | 1) in double, rounded to float32 (rng.h)."""
    i = np.arange(offset, offset + n, dtype=np.uint64)
    lo, hi = offset & ~1, (offset + n - 1) | 1  # the pairs' first and last index
    u = uniform(seed, hi + 1 - lo, lo, step, rank, purpose).astype(np.float64)
    u0 = u[(i & ~np.uint64(1)).astype(np.int64) - lo]
    u1 = u[(i | np.uint64(1)).astype(np.int64) - lo]
    r = np.sqrt(-2.0 * np.log(1.0 - u0))
    angle = 2.0 * np.pi * u1
    return np.where(i % np.uint64(2) == 0, r * np.cos(angle), r * np.sin(angle)).astype(np.float32)


if __name__ == "__main__":
    # The Random123 known answers (kat_vectors).
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in kat:
        got = tuple(int(v) for v in philox4x32_10(*[np.uint64(c) for c in ctr], *key))
        assert got == want, (got, want)
    print("philox known answers ok")
