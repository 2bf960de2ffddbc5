//! Calendar dates and times of day in UTC from Unix time, for what xlb prints (`xlb drops`,
//! the bench's report), without a date library for one conversion.

/// A Unix time as a UTC calendar date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc {
    /// Year (proleptic Gregorian).
    pub year: i64,
    /// Month, 1..=12.
    pub month: u32,
    /// Day of the month, 1..=31.
    pub day: u32,
    /// Hour, 0..=23.
    pub hour: u32,
    /// Minute, 0..=59.
    pub minute: u32,
    /// Second, 0..=59 (Unix time has no leap seconds).
    pub second: u32,
}

impl Utc {
    /// The date and time `secs` seconds after 1970-01-01 00:00:00 UTC.
    pub fn of_unix_secs(secs: u64) -> Self {
        let (days, sod) = ((secs / 86_400) as i64, secs % 86_400);
        // Days since 1970-01-01 to a civil date: Howard Hinnant's algorithm (eras of 400
        // years, each 146 097 days; years counted from March so that a leap day ends one).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Self {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (sod / 3600) as u32,
            minute: (sod % 3600 / 60) as u32,
            second: (sod % 60) as u32,
        }
    }

    /// `2026-11-29T11:20:59Z` (RFC 3339).
    pub fn rfc3339(&self) -> String {
        format!("{}T{}Z", self.date(), self.time())
    }

    /// `2026-11-29`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `11:20:59`.
    pub fn time(&self) -> String {
        format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_as_date_prints_them() {
        // `date -u -d @N +%FT%TZ` for each.
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (951_868_799, "2000-02-29T23:59:59Z"),
            (1_795_951_259, "2026-11-29T11:20:59Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
        ] {
            assert_eq!(Utc::of_unix_secs(secs).rfc3339(), want, "{secs}");
        }
    }
}
