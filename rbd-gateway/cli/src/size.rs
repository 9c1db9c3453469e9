//! Size arguments as `rbd` parses them: `10G`, `512M`, `4K`, `4096B`,
//! `1Ti`, `2GiB`; a bare number is in `default_unit` bytes (`rbd` reads
//! `--size 1024` as MiB, `--object-size 4096` as bytes).

use crate::error::{CliError, CliResult};

/// One MiB, the unit of a bare `--size`.
pub const MIB: u64 = 1 << 20;

/// Parses `s` with binary (IEC) suffixes B/K/M/G/T/P/E, optionally followed
/// by `i`, `B` or `iB`; a bare number is multiplied by `default_unit`.
pub fn parse_size(s: &str, default_unit: u64) -> CliResult<u64> {
    let bad = || CliError::usage(format!("rbd-row: invalid size value '{s}'"));
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit: u64 = match suffix.to_ascii_uppercase().as_str() {
        "" => default_unit,
        "B" => 1,
        "K" | "KI" | "KB" | "KIB" => 1 << 10,
        "M" | "MI" | "MB" | "MIB" => 1 << 20,
        "G" | "GI" | "GB" | "GIB" => 1 << 30,
        "T" | "TI" | "TB" | "TIB" => 1 << 40,
        "P" | "PI" | "PB" | "PIB" => 1 << 50,
        "E" | "EI" | "EB" | "EIB" => 1 << 60,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

/// Formats bytes the way `rbd` does (`1 MiB`, `987 KiB`, `0 B`, `1.5 GiB`).
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut idx = 0;
    let mut v = n;
    while v >= 1024 && v.is_multiple_of(1024) && idx < UNITS.len() - 1 {
        v /= 1024;
        idx += 1;
    }
    if v < 1024 || idx == UNITS.len() - 1 {
        return format!("{v} {}", UNITS[idx]);
    }
    // Not a whole number of the next unit: show with decimals.
    let mut f = n as f64;
    let mut i = 0;
    while f >= 1024.0 && i < UNITS.len() - 1 {
        f /= 1024.0;
        i += 1;
    }
    let s = format!("{f:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G", MIB).ok(), Some(10 << 30));
        assert_eq!(parse_size("512M", MIB).ok(), Some(512 << 20));
        assert_eq!(parse_size("4K", 1).ok(), Some(4096));
        assert_eq!(parse_size("4096", 1).ok(), Some(4096));
        assert_eq!(parse_size("1", MIB).ok(), Some(MIB));
        assert_eq!(parse_size("4096B", MIB).ok(), Some(4096));
        assert_eq!(parse_size("2GiB", MIB).ok(), Some(2 << 30));
        assert!(parse_size("x", MIB).is_err());
        assert!(parse_size("1Q", MIB).is_err());
        assert!(parse_size("99999999999E", MIB).is_err());
        assert_eq!(format_bytes(1 << 20), "1 MiB");
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(987136), "964 KiB");
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
    }
}
