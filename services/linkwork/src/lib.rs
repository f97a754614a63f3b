//! The `linkwork` command: every service and tool behind one binary.

pub mod admin;
pub mod commands;
pub mod directory_command;
pub mod memory;
pub mod process;
pub mod serve;
pub mod settings;
pub mod shutdown;
pub mod topics_command;
pub mod topology;
