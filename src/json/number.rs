//! .NET Core's `double.ToString(CultureInfo.InvariantCulture)`: the shortest round-trip digits,
//! laid out by `Number.FormatGeneral` with `nMaxDigits = max(digits, DoublePrecision = 17)`.
//!
//! Examples: `98.6`, `65` (for 65.0), `10000000000000000`, `1E+17`, `1E-05`, `0.0001`, `-0`.

use super::JString;

/// Formats a double exactly as .NET Core 3.0+ does with the invariant culture (inline: at most
/// 24 bytes, no allocation).
pub fn format_double(value: f64) -> JString {
    if value.is_nan() {
        return JString::const_new("NaN");
    }
    if value.is_infinite() {
        return JString::const_new(if value > 0.0 { "Infinity" } else { "-Infinity" });
    }
    // At most: sign, 17 digits, point, 3 zeros (scale >= -3), exponent `E+308`.
    let mut out = [0u8; 40];
    let mut len = 0;
    let mut push = |byte: u8| {
        out[len] = byte;
        len += 1;
    };
    if value.is_sign_negative() {
        push(b'-');
    }
    if value == 0.0 {
        push(b'0');
    } else {
        let (digits, scale) = shortest_digits(value.abs());
        let digits = digits.as_bytes();
        let max_digits = (digits.len() as i32).max(17);
        let use_exponent = scale > max_digits || scale < -3;
        let mut point = if use_exponent { 1 } else { scale };
        let mut next = digits.iter();
        if point > 0 {
            while point > 0 {
                push(next.next().copied().unwrap_or(b'0'));
                point -= 1;
            }
        } else {
            push(b'0');
        }
        let rest = next.as_slice();
        if !rest.is_empty() || point < 0 {
            push(b'.');
            while point < 0 {
                push(b'0');
                point += 1;
            }
            rest.iter().for_each(|&digit| push(digit));
        }
        if use_exponent {
            let shown = scale - 1;
            push(b'E');
            push(if shown < 0 { b'-' } else { b'+' });
            let magnitude = shown.unsigned_abs();
            if magnitude < 10 {
                push(b'0');
            }
            Digits::of_integer(u64::from(magnitude))
                .as_bytes()
                .iter()
                .for_each(|&digit| push(digit));
        }
    }
    JString::new(std::str::from_utf8(&out[..len]).expect("ASCII"))
}

/// The shortest round-trip significant digits of a positive finite double, and its .NET "scale"
/// (value = 0.d1d2d3… × 10^scale): the digits of the standard library's shortest form (Grisu
/// with a Dragon4 fallback, as .NET uses).
///
/// `ryu` finds them several times faster, and both pick the shortest form closest to the value.
/// They differ only on how they break a tie between two forms equally close, so `ryu` decides
/// wherever no tie can arise: up to 15 significant digits the shortest form is unique (15-digit
/// decimals are further apart than a double's rounding interval is wide), and a value whose
/// exact expansion is long cannot lie halfway between two shorter forms. Elsewhere the standard
/// library decides (for `1.6582067800885623e15`, `ryu` gives `…22e15`).
pub(crate) fn shortest_digits(value: f64) -> (Digits, i32) {
    if let Some((mantissa, exponent)) = short_form(value) {
        let digits = Digits::of_integer(mantissa);
        let count = digits.len as i32;
        return (digits, count + exponent);
    }
    let mut buffer = ryu::Buffer::new();
    let (digits, scale) = read_scientific(buffer.format_finite(value));
    if digits.len <= 15 || has_long_expansion(value) {
        return (digits, scale);
    }
    let mut buffer = [0u8; 40];
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    std::io::Write::write_fmt(&mut cursor, format_args!("{value:e}")).expect("a double's shortest form fits 40 bytes");
    let written = cursor.position() as usize;
    read_scientific(std::str::from_utf8(&buffer[..written]).expect("ASCII"))
}

/// The powers of ten a double holds exactly, 10^0 to 10^22.
pub(crate) const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// The shortest decimal of a positive double in `[1e-7, 1e15)` that has at most 15 significant
/// digits, as `(mantissa, exponent)` with `value` = mantissa × 10^exponent and no trailing zeros
/// in the mantissa; `None` when the shortest form is longer (or `value` out of that range).
///
/// Such a decimal is unique (see [`shortest_digits`]), and scaling `value` by the power of ten
/// that gives it 15 integer digits recovers its digits exactly: the scaled value stays below
/// 2^50, where the rounding of `value` and of the product add up to less than 0.25. The
/// candidate is kept only if it converts back to `value` (a mantissa below 2^53 over an exact
/// power of ten is one correctly rounded division). Several times faster than `ryu` on short
/// forms, which it reaches only after removing digits one at a time.
pub(crate) fn short_form(value: f64) -> Option<(u64, i32)> {
    if !(1e-7..1e15).contains(&value) {
        return None;
    }
    let binary_exponent = ((value.to_bits() >> 52) as i32) - 1023;
    // floor(binary_exponent × log10(2)): floor(log10(value)) or one less.
    let decimal_exponent = (binary_exponent * 1233) >> 12;
    let mut power = (14 - decimal_exponent) as usize;
    let mut scaled = value * EXACT_POWERS_OF_TEN[power];
    if scaled >= 1e15 {
        power -= 1;
        scaled = value * EXACT_POWERS_OF_TEN[power];
    }
    let mut mantissa = scaled.round() as u64;
    if mantissa as f64 / EXACT_POWERS_OF_TEN[power] != value {
        return None;
    }
    let mut exponent = -(power as i32);
    for (factor, digits) in [(100_000_000, 8), (10_000, 4), (100, 2), (10, 1)] {
        if mantissa.is_multiple_of(factor) {
            mantissa /= factor;
            exponent += digits;
        }
    }
    Some((mantissa, exponent))
}

/// Whether the exact decimal expansion of `value` has more than 18 significant digits, so that
/// it is never the midpoint of two forms of 17 digits or fewer. With `value` = m × 2^e, m odd and
/// e < 0, the expansion is m × 5^-e × 10^e, and m × 5^-e is odd with at least 19 digits once
/// -e ≥ 26 (5^26 > 10^18).
fn has_long_expansion(value: f64) -> bool {
    let bits = value.to_bits();
    let biased_exponent = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exponent) = if biased_exponent == 0 {
        (fraction, -1074)
    } else {
        (fraction | 1 << 52, biased_exponent - 1075)
    };
    mantissa != 0 && exponent + (mantissa.trailing_zeros() as i32) <= -26
}

/// The significant digits and .NET scale of a decimal text in any layout (`12.34`, `0.001234`,
/// `5e+02`, `1.2E-7`).
fn read_scientific(text: &str) -> (Digits, i32) {
    let bytes = text.as_bytes();
    let mut digits = Digits::default();
    let (mut seen, mut leading_zeros, mut before_point) = (0, 0, None);
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'0' if digits.len == 0 => leading_zeros += 1,
            b'0'..=b'9' => digits.push(byte),
            b'.' => before_point = Some(seen),
            b'e' | b'E' => break,
            _ => {}
        }
        seen += i32::from(byte.is_ascii_digit());
        index += 1;
    }
    let exponent = bytes.get(index + 1..).map_or(0, |rest| {
        let (negative, rest) = match rest.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, rest),
        };
        let magnitude = rest.iter().fold(0i32, |sum, &digit| sum * 10 + i32::from(digit - b'0'));
        if negative { -magnitude } else { magnitude }
    });
    while digits.len > 1 && digits.bytes[digits.len - 1] == b'0' {
        digits.len -= 1;
    }
    (digits, before_point.unwrap_or(seen) + exponent - leading_zeros)
}

/// Up to 32 ASCII digits on the stack.
#[derive(Default)]
pub(crate) struct Digits {
    bytes: [u8; 32],
    len: usize,
}

impl Digits {
    /// The digits, as ASCII.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The decimal digits of `value`.
    fn of_integer(mut value: u64) -> Self {
        let mut reversed = Digits::default();
        loop {
            reversed.push(b'0' + (value % 10) as u8);
            value /= 10;
            if value == 0 {
                break;
            }
        }
        let mut digits = Digits::default();
        reversed.as_bytes().iter().rev().for_each(|&digit| digits.push(digit));
        digits
    }

    fn push(&mut self, byte: u8) {
        if self.len < self.bytes.len() {
            self.bytes[self.len] = byte;
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{format_double, shortest_digits};

    #[test]
    fn matches_dotnet_core_round_trip_formatting() {
        let cases: &[(f64, &str)] = &[
            (65.0, "65"),
            (98.6, "98.6"),
            (1.10, "1.1"),
            (1.9812, "1.9812"),
            (98.43639286275842, "98.43639286275842"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-60.0, "-60"),
            (-0.0, "-0"),
            (0.0, "0"),
            (1e15, "1000000000000000"),
            (1e16, "10000000000000000"),
            (1e17, "1E+17"),
            (123456789012345678.0, "1.2345678901234568E+17"),
            (1234567890123456.7, "1234567890123456.8"),
            (9223372036854775808.0, "9.223372036854776E+18"),
            (1.2345678901234568e20, "1.2345678901234568E+20"),
            (0.0001, "0.0001"),
            (0.00001, "1E-05"),
            (1.5e-7, "1.5E-07"),
            (1e100, "1E+100"),
            (f64::MAX, "1.7976931348623157E+308"),
            (5e-324, "5E-324"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for &(value, expected) in cases {
            assert_eq!(format_double(value), expected, "{value:?}");
        }
    }

    /// The digits and exponent agree with the standard library's shortest scientific form.
    #[test]
    fn agrees_with_std_shortest_digits() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            crate::test_support::xorshift(&mut state);
            // Random bits (mostly 17-digit forms), short decimals, quotients such as unit
            // conversions make (long expansions: `ryu` decides), and values near 2^50 with one or
            // two fraction bits (short expansions, where the libraries break ties differently).
            let short = format!("{}e{}", state % 10u64.pow(1 + (state % 15) as u32), (state >> 40) % 80)
                .parse::<f64>()
                .unwrap()
                / 1e40;
            let quotient = (state % 100_000) as f64 / ((state >> 32) % 9_999 + 1) as f64;
            let near_tie = (state >> 14) as f64 + 0.25 * (state % 4) as f64;
            for value in [f64::from_bits(state), short, quotient, near_tie] {
                if !value.is_finite() || value == 0.0 {
                    continue;
                }
                let (digits, scale) = shortest_digits(value.abs());
                let std = format!("{:e}", value.abs());
                let (mantissa, exponent) = std.split_once('e').unwrap();
                let std_digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
                assert_eq!(std::str::from_utf8(digits.as_bytes()).unwrap(), std_digits, "{value:e}");
                assert_eq!(scale, exponent.parse::<i32>().unwrap() + 1, "{value:e}");
            }
        }
    }

    #[test]
    fn always_round_trips() {
        for value in [std::f64::consts::PI, 2.0f64.powi(60), 1.0 / 3.0, 6.02214076e23, 1e-300] {
            let text = format_double(value).replace("E+", "e").replace('E', "e");
            assert_eq!(text.parse::<f64>().unwrap(), value);
        }
    }
}
