//! Placeholder: sluice-dns is being written; it does nothing yet.
fn main() -> std::process::ExitCode {
    eprintln!("sluice-dns: not implemented yet");
    std::process::ExitCode::FAILURE
}
