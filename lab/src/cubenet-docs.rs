//! `cubenet-docs OUT`: writes the man pages and shell completions of every
//! cubenet program under OUT (`man/man{1,5,8}/`, `completions/{bash,zsh,fish}/`), made
//! from the same definitions as their `--help`.
//!
//! Exit codes: 0 ok; 1 a file could not be written; 2 bad usage.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: cubenet-docs OUT");
        return ExitCode::from(2);
    };
    if out == "--help" || out == "-h" {
        println!(
            "usage: cubenet-docs OUT\nWrites OUT/man/man{{1,5,8}}/* and OUT/completions/{{bash,zsh,fish}}/*."
        );
        return ExitCode::SUCCESS;
    }
    match cubenet_lab::docs::generate(std::path::Path::new(&out)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cubenet-docs: {e}");
            ExitCode::from(1)
        }
    }
}
