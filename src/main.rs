//! The `portico` binary: parses arguments and hands over to [`portico::cli`].

fn main() -> std::process::ExitCode {
    portico::cli::run()
}
