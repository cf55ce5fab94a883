//! One module per subcommand; each turns parsed arguments into validated
//! settings, acts, and returns the exit status.

mod cluster_view;
mod device_report;
mod device_view;
pub mod docs;
pub mod key;
pub mod run;
pub mod status;
