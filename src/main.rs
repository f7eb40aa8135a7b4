//! The `longlink` binary: parses the command line and hands over to the library.

/// jemalloc rather than the system allocator: with 19,000 idle connections it holds the
/// same heap in about 230 fewer bytes per connection (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    match longlink::cli::main() {
        Ok(code) => code,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {error:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
