//! `cadang`: parse the command line, set up logging, run.

use clap::Parser;

fn main() {
    cadang::tune_allocator();
    // One TLS crypto provider for the whole process (tonic, object_store and sqlx all use
    // rustls); installing it first avoids a runtime choice between two.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = cadang::cli::Cli::parse();
    cadang::cli::end_quietly_on_closed_output(&cli);
    let json_logs = cadang::cli::wants_json_logs(&cli);
    let default = match cli.global.verbose {
        0 if cadang::cli::is_daemon(&cli) => "info",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CADANG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: the journal, a log file or a pipe get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if json_logs {
        logs.json().init();
    } else {
        logs.init();
    }
    let code = cadang::cli::run(cli);
    std::process::exit(code as i32);
}
