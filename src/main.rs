//! The `runnel` binary: a thin entry point over [`runnel::cli`].

fn main() {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    args.remove(0);
    let server = args.first().is_some_and(|a| a == "server");
    // The server logs its lifecycle at info; the client speaks only through its output and errors.
    let default_level = if server { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level)).init();
    std::process::exit(runnel::cli::main(args));
}
