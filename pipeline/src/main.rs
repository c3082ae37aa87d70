//! `locvtp-flow`: pre-train LocVTP video-text models and extract clip
//! features, as timely-dataflow graphs described by TOML files.

fn main() -> std::process::ExitCode {
    locvtp_flow::cli::main()
}
