//! `rbd-row`: the command-line tool of rbd-row, with `rbd`'s verbs, flags,
//! output formats and exit codes, over the row-layer engine on an embedded
//! local store or a Ceph cluster (RADOS backend).
//!
//! The binary (`src/bin/rbd-row.rs`) only parses arguments and calls
//! [`run`]; everything else is here so that the gateway can reuse pieces,
//! in particular [`store_select`] (which store a command line or the
//! environment names, and opening [`row_layer::Store`]s in it).
//!
//! Errors are [`CliError`]s carrying the errno `rbd` would exit with and
//! `rbd`'s wording (`error opening image foo: (2) No such file or
//! directory`).

mod bench;
pub mod cli;
mod commands;
mod create_opts;
mod ctx;
pub mod error;
pub mod size;
pub mod spec;
pub mod store_select;
pub mod streams;
mod util;

pub use cli::Cli;
pub use commands::run;
pub use error::{CliError, CliResult};
