//! The latency histogram layout: log-linear buckets of bounded relative width.
//!
//! A value `v` (nanoseconds) below `2^SUB_BITS` has a bucket of its own.
//! Above that, each power of two `[2^e, 2^(e+1))` is split into `2^SUB_BITS`
//! equal sub-buckets, so a bucket's width is at most `2^-SUB_BITS` of its
//! lower bound (3.1% with `SUB_BITS = 5`). A percentile reported as the
//! bucket's midpoint is then within 1.6% of the true value, well inside the
//! product's 5% promise; plain log2 buckets would be off by up to 2x.
//!
//! Both the kernel and the agent compute indexes with [`bucket_of`]; the
//! agent turns an index back into a range with [`bucket_lower`] and
//! [`bucket_upper`].

/// Sub-bucket bits per power of two.
pub const SUB_BITS: u32 = 5;
/// Sub-buckets per power of two.
pub const SUB_COUNT: u64 = 1 << SUB_BITS;
/// Number of buckets needed to cover every `u64`.
pub const BUCKETS: u32 = ((64 - SUB_BITS + 1) as u64 * SUB_COUNT) as u32;

/// Position of the highest set bit (floor(log2(v))), for `v > 0`.
///
/// Written as a branchy binary search rather than `leading_zeros` because
/// BPF has no count-leading-zeros instruction and the verifier must see a
/// bounded, loop-free body.
#[inline(always)]
pub fn log2(v: u64) -> u32 {
    let mut v = v;
    let mut r = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Bucket index of `v`. Always below [`BUCKETS`].
#[inline(always)]
pub fn bucket_of(v: u64) -> u32 {
    if v < SUB_COUNT {
        return v as u32;
    }
    let e = log2(v);
    let sub = ((v >> (e - SUB_BITS)) & (SUB_COUNT - 1)) as u32;
    ((e - SUB_BITS + 1) << SUB_BITS) + sub
}

/// Smallest value in bucket `i`.
pub fn bucket_lower(i: u32) -> u64 {
    let i = i as u64;
    if i < SUB_COUNT {
        return i;
    }
    let group = i >> SUB_BITS; // >= 1
    let sub = i & (SUB_COUNT - 1);
    let shift = group - 1;
    if shift + SUB_BITS as u64 >= 64 {
        // Top group: (SUB_COUNT + sub) << shift would overflow only past u64::MAX.
        return (SUB_COUNT + sub).checked_shl(shift as u32).unwrap_or(u64::MAX);
    }
    (SUB_COUNT + sub) << shift
}

/// Largest value in bucket `i` (inclusive).
pub fn bucket_upper(i: u32) -> u64 {
    if i + 1 >= BUCKETS {
        return u64::MAX;
    }
    bucket_lower(i + 1) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_matches_leading_zeros() {
        for v in (1..5000u64).chain([u32::MAX as u64, 1 << 40, u64::MAX, (1 << 63) + 5]) {
            assert_eq!(log2(v), 63 - v.leading_zeros(), "v={v}");
        }
    }

    #[test]
    fn every_value_falls_inside_its_bucket() {
        let mut v = 0u64;
        while v < u64::MAX / 5 {
            let b = bucket_of(v);
            assert!(b < BUCKETS);
            assert!(bucket_lower(b) <= v && v <= bucket_upper(b), "v={v} b={b}");
            v = v * 5 / 4 + 1;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_upper(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        for i in 0..BUCKETS - 1 {
            assert_eq!(bucket_upper(i) + 1, bucket_lower(i + 1), "gap after {i}");
            let lo = bucket_lower(i) as f64;
            let width = (bucket_upper(i) - bucket_lower(i) + 1) as f64;
            if i >= SUB_COUNT as u32 {
                assert!(width / lo <= 1.0 / SUB_COUNT as f64 + 1e-12, "bucket {i} too wide");
            }
        }
    }
}
