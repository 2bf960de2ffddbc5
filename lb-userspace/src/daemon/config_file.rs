//! The config file a daemon runs from, read again on SIGHUP or on the control socket's
//! `reload` op. One path for both, so that they refuse and apply alike; the op also answers
//! what changed, or why nothing did, where SIGHUP can only log it, and plans without
//! applying (`dry_run`). [`ReloadHistory`] keeps how they ended, for the metrics and
//! `status`.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use super::state::{Daemon, ReloadError};
use crate::{
    config::{Config, ConfigError},
    reload::Step,
};

/// The file the daemon runs from.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    /// `--config`; `None`: the daemon runs from the control socket alone.
    path: Option<PathBuf>,
}

/// Why a reload did not happen, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum FileReloadError {
    /// The daemon runs without `--config`.
    #[error("xlb runs without --config: there is no file to reload")]
    NoFile,
    /// The file could not be read; nothing changed.
    #[error("reload of {} refused, nothing changed: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid config; nothing changed.
    #[error("reload of {} refused, nothing changed: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The first field in error.
        #[source]
        source: ConfigError,
    },
    /// The daemon refused the file's changes, or a step failed midway.
    #[error("reload of {}: {source}", path.display())]
    Reload {
        /// The file.
        path: PathBuf,
        /// What the daemon said.
        #[source]
        source: ReloadError,
    },
    /// A panic poisoned the daemon's state.
    #[error("daemon state poisoned by a panic; restart xlb")]
    Poisoned,
}

impl FileReloadError {
    /// Whether some steps were applied before the reload stopped (every other error
    /// leaves the running state as it was).
    pub fn partly_applied(&self) -> bool {
        matches!(
            self,
            Self::Reload {
                source: ReloadError::Step { .. },
                ..
            }
        )
    }
}

impl ConfigFile {
    /// The daemon's `--config`, if any.
    pub fn new(path: Option<PathBuf>) -> Self {
        Self { path }
    }

    /// The file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Logs a reload's outcome (`by`: what asked for it) — each change, or why none was
    /// made — and notes it in the daemon's [`ReloadHistory`]. SIGHUP and the control
    /// socket's reloads read alike in the log, the metrics and `status`.
    pub fn record(
        &self,
        daemon: &Mutex<Daemon>,
        by: &'static str,
        outcome: &Result<Vec<Step>, FileReloadError>,
    ) {
        self.log(by, outcome);
        match daemon.lock() {
            Ok(mut d) => d.note_reload(by, outcome),
            Err(_) => log::error!("reload ({by}): daemon state poisoned by a panic"),
        }
    }

    fn log(&self, by: &str, outcome: &Result<Vec<Step>, FileReloadError>) {
        match outcome {
            Ok(steps) => {
                for s in steps {
                    log::info!("reload: {s}");
                }
                let path = self.path().map(|p| p.display().to_string());
                log::info!(
                    "reloaded {} ({by}): {} changes",
                    path.unwrap_or_default(),
                    steps.len()
                );
            }
            Err(e @ FileReloadError::NoFile) => log::warn!("{by}: {e}"),
            Err(e) => log::error!("{e} ({by})"),
        }
    }

    /// Reads the file again and makes the running VIPs its VIPs (`Daemon::reload`), or
    /// with `dry_run` only says how (`Daemon::plan_reload`). The file is read before the
    /// daemon's lock is taken. Returns the steps, taken or to take.
    pub fn reload(
        &self,
        daemon: &Mutex<Daemon>,
        dry_run: bool,
    ) -> Result<Vec<Step>, FileReloadError> {
        let path = self.path.clone().ok_or(FileReloadError::NoFile)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => return Err(FileReloadError::Read { path, source }),
        };
        let new = match Config::from_json(&text) {
            Ok(c) => c,
            Err(source) => return Err(FileReloadError::Invalid { path, source }),
        };
        let mut d = daemon.lock().map_err(|_| FileReloadError::Poisoned)?;
        let steps = if dry_run {
            d.plan_reload(&new)
        } else {
            d.reload(&new)
        };
        steps.map_err(|source| FileReloadError::Reload { path, source })
    }
}

/// How a reload ended, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// The file's changes were made (perhaps none).
    Applied,
    /// Nothing changed: no file, unreadable, invalid, or asking for a restart.
    Refused,
    /// A step failed midway; the steps before it stay.
    Failed,
}

impl ReloadResult {
    /// Every result, in metrics order.
    pub const ALL: [ReloadResult; 3] = [Self::Applied, Self::Refused, Self::Failed];

    /// The metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }

    /// The result of `outcome`.
    pub fn of(outcome: &Result<Vec<Step>, FileReloadError>) -> Self {
        match outcome {
            Ok(_) => Self::Applied,
            Err(e) if e.partly_applied() => Self::Failed,
            Err(_) => Self::Refused,
        }
    }
}

/// The last reload: when, who asked, and its error if it did not apply.
#[derive(Clone, Debug)]
pub struct LastReload {
    /// When it ended.
    pub at: SystemTime,
    /// What asked for it (`SIGHUP`, `xlb reload`).
    pub by: &'static str,
    /// How it ended.
    pub result: ReloadResult,
    /// Why it did not apply (`None` when it did).
    pub error: Option<String>,
}

/// Reloads since the daemon started, for metrics (`xlb_config_*`) and `status`: a reload
/// refused on SIGHUP is otherwise only a log line, and operators alert on it (as on
/// Prometheus' own `config_last_reload_successful`).
#[derive(Clone, Debug)]
pub struct ReloadHistory {
    /// Reloads by result, in [`ReloadResult::ALL`]'s order.
    counts: [u64; 3],
    /// The last one, if any.
    last: Option<LastReload>,
    /// When the running config was last loaded whole: start-up, or the last applied reload.
    loaded_at: SystemTime,
}

impl ReloadHistory {
    /// No reload yet; the config was loaded at `started`.
    pub fn new(started: SystemTime) -> Self {
        Self {
            counts: [0; 3],
            last: None,
            loaded_at: started,
        }
    }

    /// Notes a reload that ended at `at`.
    pub fn note(
        &mut self,
        at: SystemTime,
        by: &'static str,
        outcome: &Result<Vec<Step>, FileReloadError>,
    ) {
        let result = ReloadResult::of(outcome);
        self.counts[result as usize] += 1;
        if result == ReloadResult::Applied {
            self.loaded_at = at;
        }
        self.last = Some(LastReload {
            at,
            by,
            result,
            error: outcome.as_ref().err().map(ToString::to_string),
        });
    }

    /// Reloads that ended with `result`.
    pub fn count(&self, result: ReloadResult) -> u64 {
        self.counts[result as usize]
    }

    /// The last reload.
    pub fn last(&self) -> Option<&LastReload> {
        self.last.as_ref()
    }

    /// Whether the last reload applied (true before any: the start-up load did).
    pub fn last_ok(&self) -> bool {
        self.last
            .as_ref()
            .is_none_or(|l| l.result == ReloadResult::Applied)
    }

    /// When the running config was last loaded whole.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }
}

/// Seconds since the Unix epoch (0 for a time before it).
pub fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_history_counts_by_result_and_keeps_the_last_load() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = ReloadHistory::new(t0);
        assert!(h.last_ok() && h.last().is_none());
        h.note(at(1), "SIGHUP", &Ok(Vec::new()));
        assert_eq!((h.count(ReloadResult::Applied), h.loaded_at()), (1, at(1)));
        h.note(at(2), "xlb reload", &Err(FileReloadError::NoFile));
        assert!(!h.last_ok());
        assert_eq!(h.loaded_at(), at(1), "a refusal loads nothing");
        let last = h.last().unwrap();
        assert_eq!(
            (last.by, last.result),
            ("xlb reload", ReloadResult::Refused)
        );
        assert!(last.error.as_deref().unwrap().contains("without --config"));
        let midway = FileReloadError::Reload {
            path: "/x.json".into(),
            source: ReloadError::Step {
                step: Step::RemoveVip("198.18.1.1:80/tcp".parse().unwrap()),
                done: 2,
                source: Box::new(crate::core::CoreError::UnknownVip {
                    vip: "198.18.1.1:80/tcp".parse().unwrap(),
                }),
            },
        };
        h.note(at(3), "SIGHUP", &Err(midway));
        assert_eq!(
            ReloadResult::ALL.map(|r| h.count(r)),
            [1, 1, 1],
            "applied, refused, failed"
        );
        h.note(at(4), "SIGHUP", &Ok(Vec::new()));
        assert!(h.last_ok());
        assert_eq!(h.loaded_at(), at(4));
        assert_eq!(unix_s(at(4)), 1004.0);
    }
}
