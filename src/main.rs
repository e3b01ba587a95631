use std::process::ExitCode;

use clap::Parser;
use image_catalog::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image-catalog: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
