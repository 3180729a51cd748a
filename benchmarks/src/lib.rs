//! Shared pieces of the benchmark harnesses: percentiles, result files,
//! plots, and the inputs of the example servables.

pub mod inputs;
pub mod plot;
pub mod simworkers;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Summary statistics of a set of latencies.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Mean, microseconds.
    pub mean_us: f64,
    /// Number of samples.
    pub n: usize,
}

impl Latency {
    /// Statistics of `samples` (must not be empty).
    pub fn of(samples: &mut [Duration]) -> Latency {
        samples.sort();
        let pick = |p: f64| {
            let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
            samples[i].as_secs_f64() * 1e6
        };
        let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64;
        Latency {
            p50_us: pick(0.50),
            p99_us: pick(0.99),
            mean_us: mean * 1e6,
            n: samples.len(),
        }
    }

    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_us": round(self.p50_us),
            "p99_us": round(self.p99_us),
            "mean_us": round(self.mean_us),
            "samples": self.n,
        })
    }
}

/// The median of `values` (the upper one of an even count; NaN when
/// empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Microseconds since the Unix epoch, the clock the protocol's timestamps
/// use.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Rounds to 0.1.
pub fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `benchmarks/results/` of this checkout.
pub fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// Writes `value` as pretty JSON to `results/NAME` and returns the path.
pub fn write_result(name: &str, value: &serde_json::Value) -> std::io::Result<PathBuf> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&path, text + "\n")?;
    Ok(path)
}

/// A short description of the machine for result files.
pub fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    serde_json::json!({ "cpus": cpus, "cpu": model })
}

/// A daemon (release build, this site's `overrides` as
/// `(table, key, value)`) with `digits`, the three formation-enthalpy steps
/// and their pipeline published, and one worker with `slots` slots.
pub fn examples_daemon(
    overrides: &[(String, String, String)],
    slots: u32,
) -> Result<flotilla_tests::Flotilla, String> {
    use flotilla_tests::{Flotilla, config_with, workspace};
    let mut settings: Vec<(&str, &str, &str)> = vec![
        ("interchange", "heartbeat_period_s", "5"),
        ("interchange", "heartbeat_threshold_s", "20"),
    ];
    settings.extend(
        overrides
            .iter()
            .map(|(t, k, v)| (t.as_str(), k.as_str(), v.as_str())),
    );
    let mut f = Flotilla::start(&config_with(&settings));
    let examples = workspace().join("site-examples/servables");
    for dir in [
        "digits",
        "formation-enthalpy/parse",
        "formation-enthalpy/features",
        "formation-enthalpy/model",
    ] {
        f.publish(&examples.join(dir))?;
    }
    let out = f.cli(&[
        "pipeline",
        "create",
        "formation-enthalpy",
        "--steps",
        "formation-enthalpy-parse,formation-enthalpy-features,formation-enthalpy-model",
    ]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    f.spawn_worker(&["--slots", &slots.to_string()]);
    f.wait_workers(1);
    Ok(f)
}

/// Today's date in UTC as `YYYY-MM-DD`, for result files.
pub fn today() -> String {
    date_of(unix_seconds())
}

/// Now in UTC as `YYYY-MM-DDTHH:MM:SSZ`, for result files.
pub fn utc_timestamp() -> String {
    let secs = unix_seconds();
    let rest = secs.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        date_of(secs),
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The UTC date of a Unix time as `YYYY-MM-DD`.
fn date_of(unix_secs: i64) -> String {
    let (y, m, d) = civil_date(unix_secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The proleptic Gregorian date `days` after 1970-01-01.
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Count from 0000-03-01 so leap days fall at the end of each year, in
    // 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::civil_date;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_418), (2025, 11, 26));
        assert_eq!(civil_date(20_783), (2026, 11, 26));
        assert_eq!(civil_date(-1), (1969, 12, 31));
    }
}
