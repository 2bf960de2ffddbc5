//! The daemon's log: text lines for people (env_logger's), or one JSON object per line for
//! log pipelines (`--log-format json`), where a multi-line or quoted message in text would
//! need a parser of its own.

use std::io::Write;

/// How log lines are written (stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[2026-11-29T09:30:00.123Z INFO  xlb::daemon] message`.
    #[default]
    Text,
    /// `{"ts":"2026-11-29T09:30:00.123Z","level":"INFO","target":"xlb::daemon","msg":"message"}`.
    Json,
}

/// Installs the logger: records up to `level`, written as `format`.
pub fn init(level: log::LevelFilter, format: LogFormat) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level).format_timestamp_millis();
    if format == LogFormat::Json {
        b.format(|buf, record| {
            let ts = buf.timestamp_millis().to_string();
            let line = json_line(
                &ts,
                record.level(),
                record.target(),
                &record.args().to_string(),
            );
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

/// One record as a JSON object (no newline).
fn json_line(ts: &str, level: log::Level, target: &str, msg: &str) -> String {
    serde_json::json!({"ts": ts, "level": level.as_str(), "target": target, "msg": msg}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_is_one_object_whatever_the_message_holds() {
        let msg = "reload of \"/etc/xlb.json\" refused,\nnothing changed";
        let line = json_line(
            "2026-11-29T09:30:00.123Z",
            log::Level::Error,
            "xlb::daemon",
            msg,
        );
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ts": "2026-11-29T09:30:00.123Z", "level": "ERROR",
                               "target": "xlb::daemon", "msg": msg})
        );
    }
}
