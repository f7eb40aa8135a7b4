//! The `longlink` binary: parses the command line and hands over to the library.

/// jemalloc rather than the system allocator: with 19,000 idle connections it holds the
/// same heap in about 230 fewer bytes per connection (BENCHMARKS.md, "Where an idle
/// connection's memory goes, and the allocator"); `.cargo/config.toml` sets its caches.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long jemalloc keeps freed pages before it gives them back, in milliseconds (its
/// default is 10 s). Every connection that parks frees its task and handshake state, so
/// a ramp of new connections leaves megabytes freed at once; kept for 10 s, and purged
/// only when something allocates, that showed as 130 to 600 bytes per idle connection
/// of resident memory, varying from run to run (BENCHMARKS.md, "Idle memory").
const DECAY_MS: isize = 1_000;

fn main() -> std::process::ExitCode {
    tune_allocator();
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

/// Freed pages go back within about [`DECAY_MS`], purged by jemalloc's own background
/// thread, so an idle server's resident memory follows what it holds. Best effort: a
/// refusal leaves jemalloc's defaults.
fn tune_allocator() {
    use tikv_jemalloc_ctl::{Access, AsName, background_thread};
    // Arenas made from now on take `arenas.dirty_decay_ms`; arena 0 exists already.
    let _ = b"arenas.dirty_decay_ms\0".name().write(DECAY_MS);
    let _ = b"arena.0.dirty_decay_ms\0".name().write(DECAY_MS);
    let _ = background_thread::write(true);
}
