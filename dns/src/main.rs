use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = sluice_dns::cli::Args::parse();
    match sluice_dns::cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-dns: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
