//! One module per subcommand; each turns parsed arguments into validated
//! settings, acts, and returns the exit status.

pub mod device_report;
pub mod device_view;
pub mod docs;
pub mod key;
pub mod run;
pub mod status;
