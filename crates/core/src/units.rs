//! Quantities as an operator reads them in logs and tables: sizes with a
//! unit, counts with the right plural.

/// `n` bytes with a binary unit: `121 B`, `1.5 KiB`, `12.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision loss above 2^53 bytes is far below the one decimal shown.
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `n` and `noun`, plural when `n` is not 1 (`1 file`, `2 files`).
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A duration rounded for a log: `250ms`, `1.2s`, `3m 4s`.
pub fn duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s < 60 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    format!("{}m {}s", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_written() {
        assert_eq!(bytes(121), "121 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 << 20), "12.0 MiB");
        assert_eq!(count(1, "file"), "1 file");
        assert_eq!(count(0, "file"), "0 files");
        assert_eq!(count(3, "file"), "3 files");
        use std::time::Duration as D;
        assert_eq!(duration(D::from_micros(190)), "0ms");
        assert_eq!(duration(D::from_millis(250)), "250ms");
        assert_eq!(duration(D::from_millis(1234)), "1.2s");
        assert_eq!(duration(D::from_secs(184)), "3m 4s");
    }
}
