//! The `portico` binary: parses arguments and hands over to [`portico::cli`].

// Many small, short-lived allocations per request, freed on the thread that made them:
// mimalloc's per-thread free lists serve that pattern better than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portico::cli::run()
}
