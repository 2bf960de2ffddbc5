pub mod ctl;
pub mod rate;
