//! .NET Core's `double.ToString(CultureInfo.InvariantCulture)`: the shortest round-trip digits,
//! laid out by `Number.FormatGeneral` with `nMaxDigits = max(digits, DoublePrecision = 17)`.
//!
//! Examples: `98.6`, `65` (for 65.0), `10000000000000000`, `1E+17`, `1E-05`, `0.0001`, `-0`.

/// Formats a double exactly as .NET Core 3.0+ does with the invariant culture.
pub fn format_double(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    let mut out = String::new();
    if value.is_sign_negative() {
        out.push('-');
    }
    if value == 0.0 {
        out.push('0');
        return out;
    }
    // Rust's `{:e}` gives the shortest digits that round-trip, like .NET Core's formatter.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').expect("`{:e}` always writes an exponent");
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    let exponent: i32 = exponent.parse().expect("`{:e}` writes a decimal exponent");
    // .NET's "scale": value = 0.d1d2d3… × 10^scale.
    let scale = exponent + 1;
    let max_digits = (digits.len() as i32).max(17);
    let use_exponent = scale > max_digits || scale < -3;
    let mut point = if use_exponent { 1 } else { scale };

    let mut next = digits.iter();
    if point > 0 {
        while point > 0 {
            out.push(next.next().map_or('0', |&d| d as char));
            point -= 1;
        }
    } else {
        out.push('0');
    }
    let rest: String = next.map(|&d| d as char).collect();
    if !rest.is_empty() || point < 0 {
        out.push('.');
        while point < 0 {
            out.push('0');
            point += 1;
        }
        out.push_str(&rest);
    }
    if use_exponent {
        let shown = scale - 1;
        out.push('E');
        out.push(if shown < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", shown.abs()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::format_double;

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

    #[test]
    fn always_round_trips() {
        for value in [std::f64::consts::PI, 2.0f64.powi(60), 1.0 / 3.0, 6.02214076e23, 1e-300] {
            let text = format_double(value).replace("E+", "e").replace('E', "e");
            assert_eq!(text.parse::<f64>().unwrap(), value);
        }
    }
}
