//! The `longlink` binary: parses the command line and hands over to the library.

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
