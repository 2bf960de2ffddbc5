//! The config file a daemon runs from, read again on SIGHUP or on the control socket's
//! `reload` op. One path for both, so that they refuse and apply alike; the op also answers
//! what changed, or why nothing did, where SIGHUP can only log it, and plans without
//! applying (`dry_run`).

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::state::{Daemon, ReloadError};
use crate::{
    config::{Config, ConfigError},
    reload::Step,
};

/// The file and what the daemon started with.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    /// `--config`; `None`: the daemon runs from the control socket alone.
    path: Option<PathBuf>,
    /// The config the daemon started with: its global settings cannot change in place.
    started: Config,
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
    /// The daemon's `--config` (if any) and the config it started with.
    pub fn new(path: Option<PathBuf>, started: Config) -> Self {
        Self { path, started }
    }

    /// The file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Logs a reload's outcome (`by`: what asked for it): each change, or why none was
    /// made. SIGHUP and the control socket's reloads read alike in the log.
    pub fn log(&self, by: &str, outcome: &Result<Vec<Step>, FileReloadError>) {
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
            d.plan_reload(&self.started, &new)
        } else {
            d.reload(&self.started, &new)
        };
        steps.map_err(|source| FileReloadError::Reload { path, source })
    }
}
