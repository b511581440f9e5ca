//! Helpers shared by unit tests.

/// Xorshift64: a deterministic stream of pseudo-random values for tests that compare a fast path
/// with its reference over many inputs. Advances `state` and returns it.
pub(crate) fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
