//! The partition key of a normalized Measurement (compat.md §7.2): one device's Measurements
//! always share a key, so they reach the same partition of the normalized hub and the same FHIR
//! writer.

/// The original's `DeterministicHashCodeGenerator`: Java's string hash (`h = 31·h + c` over UTF-16
/// code units, wrapping 32-bit), then `|h| mod 256` as decimal text. For `h = i32::MIN`, where
/// .NET's `Math.Abs` throws, the magnitude 2³¹ is used (key `"0"`).
pub fn device_hash(value: &str) -> String {
    let mut hash: i32 = 0;
    for unit in value.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    (i64::from(hash).abs() % 256).to_string()
}

/// The partition key of a device's Measurements: [`device_hash`] of the lower-cased device id.
pub fn partition_key(device_id: &str) -> String {
    device_hash(&device_id.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_the_originals_tests() {
        // DeterministicHashCodeGeneratorTest.
        assert_eq!(device_hash("abba"), "32");
        assert_eq!(device_hash("aaabbb"), "191");
        assert_eq!(device_hash("bbbaaa"), "33");
        assert_eq!(device_hash("abcdefghijklmnopqrstuvwxyz"), "173");
        let long = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ".repeat(3);
        assert_eq!(device_hash(long.trim_end()), "218");
    }

    #[test]
    fn keys_ignore_case_and_the_minimum_hash_does_not_fail() {
        assert_eq!(partition_key("Device-ABC"), partition_key("device-abc"));
        // "polygenelubricants" hashes to i32::MIN in Java.
        assert_eq!(device_hash("polygenelubricants"), "0");
    }
}
