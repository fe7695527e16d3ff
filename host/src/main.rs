//! The `pier` binary; everything lives in the library (see `pier::tools::cli`).

fn main() -> std::process::ExitCode {
    pier::tools::cli::main()
}
