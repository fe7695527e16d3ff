//! The `pier` binary; everything lives in the library (see `pier::cli`).

fn main() -> std::process::ExitCode {
    pier::cli()
}
