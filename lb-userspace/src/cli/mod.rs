pub mod ctl;
pub mod graceful;
pub mod rate;
