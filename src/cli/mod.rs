//! The binary's commands for people: each module holds one group's flags (with help and
//! examples) and what it does; `main.rs` dispatches.

pub mod api_commands;
pub mod build_command;
pub mod docs;
pub mod submit_command;
