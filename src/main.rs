//! The `aa-token-broker` binary: parse the command line, hand over to [`aa_token_broker::commands`].
//! Usage mistakes print one line and exit with code 2, like every other configuration error.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use aa_token_broker::config::cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(2)
                }
                _ => {
                    let rendered = e.render().to_string();
                    let first = rendered.lines().next().unwrap_or("invalid command line");
                    eprintln!("aa-token-broker: {}", first.trim_start_matches("error: "));
                    ExitCode::from(2)
                }
            };
        }
    };
    aa_token_broker::commands::run(cli.command)
}
