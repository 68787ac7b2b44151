//! The parts of cubenet-lab other programs use: its command line (for the
//! man page and completions) and the generator of every program's man
//! pages and shell completions (`cubenet-docs`).

pub mod cli;
pub mod docs;
