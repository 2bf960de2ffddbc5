pub mod ctl;
pub mod drops;
pub mod rate;
