//! The `runnel` binary: a thin entry point over [`runnel::cli`].

fn main() {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    args.remove(0);
    std::process::exit(runnel::cli::main(args));
}
