//! Placeholder: sluice-cni is being written; it does nothing yet.
fn main() -> std::process::ExitCode {
    eprintln!("sluice-cni: not implemented yet");
    std::process::ExitCode::FAILURE
}
