//! `runnel certs`: writes the CA, server and client certificates that mutual TLS needs, so setting up a
//! deployment or a test takes the runnel binary alone.
//!
//! The flags are read in two stages, as in ripgrep: every known flag is taken off the command line first
//! (so they may come in any order), then the kind picks which of them it needs and rejects the rest. The work
//! itself is in [`crate::pki`].

use std::convert::Infallible;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::cli::{CliError, FlagValues};
use crate::pki::{self, PkiError, Validity};
use rustls::pki_types::pem::PemObject;

pub const USAGE: &str = "\
Write the certificates for mutual TLS (ECDSA P-256, PEM). PREFIX names a pair of files:
--out certs/alice writes certs/alice.crt and certs/alice.key (mode 0600). An existing key is never
overwritten; delete it to generate a new one.

Usage:
  runnel certs ca --out PREFIX [--name CN] [--days N]
  runnel certs server --ca PREFIX --out PREFIX [--dns NAME]... [--ip ADDR]... [--days N]
  runnel certs client --ca PREFIX --name NAME --out PREFIX [--days N]
  runnel certs fingerprint FILE...

Kinds:
  ca        a self-signed CA that signs server and client certificates
  server    a server certificate signed by the CA at --ca
  client    a client certificate signed by the CA at --ca; --name is the client's identity
  fingerprint  print each certificate file's SHA-256 fingerprint, the value --client-cert-pin and
            --server-pin take

Options:
  --out PREFIX   where to write PREFIX.crt and PREFIX.key (parent directories are created)
  --ca PREFIX    the CA to sign with: reads PREFIX.crt and PREFIX.key
  --name NAME    ca: the CA's common name (default \"runnel CA\" and 8 random hex digits, so two CAs never
                 share a name); client: the identity (required)
  --dns NAME     server: a DNS name clients connect to (repeatable)
  --ip ADDR      server: an IP address clients connect to (repeatable)
                 without --dns and --ip: --dns localhost --ip 127.0.0.1 --ip ::1
  --days N       validity in days (default: ca 3650, server and client 825)
  -h, --help     print this help
";

/// A CA's default common name: this, a space and 8 random hex digits. Two PKIs made with the defaults must not
/// name their CAs alike: a certificate from one then looks, by name, signed by the other, and the failure is a
/// bad signature instead of an unknown issuer.
const DEFAULT_CA_NAME: &str = "runnel CA";

fn default_ca_name() -> String {
    format!("{DEFAULT_CA_NAME} {:08x}", rand::random::<u32>())
}

/// Ten years: a CA outlives the certificates it signs, and replacing it means reissuing all of them.
const DEFAULT_CA_DAYS: u32 = 3650;

/// The longest lifetime (about 27 months) the CA/Browser Forum allowed for leaf certificates, and long enough
/// that a test or small deployment need not think about renewal.
const DEFAULT_LEAF_DAYS: u32 = 825;

/// A hundred years; anything longer is a typo, and X.509 dates stop at the year 9999.
const MAX_DAYS: u32 = 36_500;

/// What every kind may be given, before the kind decides which of it applies.
struct RawFlags {
    out: Option<PathBuf>,
    ca: Option<PathBuf>,
    name: Option<String>,
    dns: Vec<String>,
    ips: Vec<String>,
    days: Option<String>,
}

/// What to write, validated.
#[derive(Debug, PartialEq)]
enum CertRequest {
    Ca { out: PathBuf, common_name: String, days: u32 },
    Server { ca: PathBuf, out: PathBuf, dns: Vec<String>, ips: Vec<IpAddr>, days: u32 },
    Client { ca: PathBuf, out: PathBuf, name: String, days: u32 },
}

/// Runs `runnel certs ...`; `args` holds what follows `certs`.
pub fn run(mut args: pico_args::Arguments) -> Result<(), CliError> {
    if args.contains(["-h", "--help"]) {
        print!("{USAGE}");
        return Ok(());
    }
    let rest = args.finish();
    if rest.first().is_some_and(|kind| kind == "fingerprint") {
        return print_fingerprints(&rest[1..]);
    }
    let request = parse(pico_args::Arguments::from_vec(rest))?;
    execute(&request)
}

/// `runnel certs fingerprint FILE...`: the SHA-256 of each file's first certificate and the identity it names,
/// `sha256:HEX  FILE  (identity "NAME")`.
fn print_fingerprints(files: &[OsString]) -> Result<(), CliError> {
    if files.is_empty() {
        return Err(CliError::usage("`runnel certs fingerprint FILE...`: name at least one certificate file"));
    }
    for file in files {
        let path = PathBuf::from(file);
        let first = rustls::pki_types::CertificateDer::pem_file_iter(&path)
            .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?
            .next()
            .ok_or_else(|| CliError::usage(format!("{}: no CERTIFICATE block in the file", path.display())))?
            .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
        // What a pin admits is this identity: without a CA, nobody else vouches for the name.
        let identity = match pki::identity_from_cert_der(&first) {
            Ok(identity) => format!("identity {:?}", super::format::terminal_safe(&identity)),
            Err(err) => format!("no identity: {err}"),
        };
        println!("{}  {}  ({identity})", crate::tls::Fingerprint::of(&first), path.display());
    }
    Ok(())
}

fn parse(mut args: pico_args::Arguments) -> Result<CertRequest, CliError> {
    let raw = RawFlags {
        out: args.opt_value_from_os_str("--out", path_from_os_str)?,
        ca: args.opt_value_from_os_str("--ca", path_from_os_str)?,
        name: args.flag_value("--name")?,
        dns: args.flag_values("--dns")?,
        ips: args.flag_values("--ip")?,
        days: args.flag_value("--days")?,
    };
    let (unknown_flags, free): (Vec<OsString>, Vec<OsString>) =
        args.finish().into_iter().partition(|arg| arg.to_string_lossy().starts_with('-'));
    if !unknown_flags.is_empty() {
        return Err(CliError::usage(format!(
            "unknown flag(s) for `runnel certs`: {} (see --help)",
            joined(&unknown_flags)
        )));
    }
    let mut free = free.into_iter();
    let Some(kind) = free.next().map(|kind| kind.to_string_lossy().into_owned()) else {
        return Err(CliError::usage("missing certificate kind: `runnel certs ca|server|client ...` (see --help)"));
    };
    let extra: Vec<OsString> = free.collect();
    if !extra.is_empty() {
        return Err(CliError::usage(format!(
            "unexpected argument(s) for `runnel certs {kind}`: {} (see --help)",
            joined(&extra)
        )));
    }

    match kind.as_str() {
        "ca" => {
            reject_flags(
                &kind,
                &[("--ca", raw.ca.is_some()), ("--dns", !raw.dns.is_empty()), ("--ip", !raw.ips.is_empty())],
            )?;
            Ok(CertRequest::Ca {
                out: require(raw.out, &kind, "--out PREFIX")?,
                common_name: raw.name.unwrap_or_else(default_ca_name),
                days: parse_days(raw.days.as_deref(), DEFAULT_CA_DAYS)?,
            })
        }
        "server" => {
            reject_flags(&kind, &[("--name", raw.name.is_some())])?;
            let (dns, ips) = if raw.dns.is_empty() && raw.ips.is_empty() {
                (
                    vec!["localhost".to_owned()],
                    vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])],
                )
            } else {
                (raw.dns, raw.ips.iter().map(|ip| parse_ip(ip)).collect::<Result<_, _>>()?)
            };
            Ok(CertRequest::Server {
                ca: require(raw.ca, &kind, "--ca PREFIX")?,
                out: require(raw.out, &kind, "--out PREFIX")?,
                dns,
                ips,
                days: parse_days(raw.days.as_deref(), DEFAULT_LEAF_DAYS)?,
            })
        }
        "client" => {
            reject_flags(&kind, &[("--dns", !raw.dns.is_empty()), ("--ip", !raw.ips.is_empty())])?;
            let name = require(raw.name, &kind, "--name NAME")?;
            // A certificate the server would not take as an identity is useless: say so now.
            pki::check_identity(&name).map_err(|reason| CliError::usage(format!("--name {name:?}: {reason}")))?;
            Ok(CertRequest::Client {
                ca: require(raw.ca, &kind, "--ca PREFIX")?,
                name,
                out: require(raw.out, &kind, "--out PREFIX")?,
                days: parse_days(raw.days.as_deref(), DEFAULT_LEAF_DAYS)?,
            })
        }
        other => Err(CliError::usage(format!("unknown certificate kind {other:?}: expected ca, server or client"))),
    }
}

fn execute(request: &CertRequest) -> Result<(), CliError> {
    let (out, summary) = match request {
        CertRequest::Ca { out, common_name, days } => {
            pki::write_ca(out, common_name, &Validity::days_from_now(*days)).map_err(cli_error)?;
            (out, format!("CA {common_name:?}, valid {days} days"))
        }
        CertRequest::Server { ca, out, dns, ips, days } => {
            pki::write_server(ca, out, dns, ips, &Validity::days_from_now(*days)).map_err(cli_error)?;
            let names: Vec<String> = dns.iter().cloned().chain(ips.iter().map(IpAddr::to_string)).collect();
            (out, format!("server for {}, valid {days} days", names.join(", ")))
        }
        CertRequest::Client { ca, out, name, days } => {
            pki::write_client(ca, out, name, &Validity::days_from_now(*days)).map_err(cli_error)?;
            (out, format!("client {name:?}, valid {days} days"))
        }
    };
    eprintln!("wrote {} and {} ({summary})", pki::cert_path(out).display(), pki::key_path(out).display());
    Ok(())
}

/// A bad name or period is the command line's fault (exit 2); anything else is a local failure (exit 1).
fn cli_error(err: PkiError) -> CliError {
    match err {
        PkiError::InvalidName { .. }
        | PkiError::NoServerNames
        | PkiError::InvalidValidity { .. }
        | PkiError::BadOutputPrefix { .. } => CliError::usage(err.to_string()),
        _ => CliError::local(err.to_string()),
    }
}

fn path_from_os_str(value: &std::ffi::OsStr) -> Result<PathBuf, Infallible> {
    Ok(PathBuf::from(value))
}

fn require<T>(value: Option<T>, kind: &str, flag: &str) -> Result<T, CliError> {
    value.ok_or_else(|| CliError::usage(format!("`runnel certs {kind}` needs {flag} (see --help)")))
}

fn reject_flags(kind: &str, given: &[(&str, bool)]) -> Result<(), CliError> {
    match given.iter().find(|(_, present)| *present) {
        Some((flag, _)) => Err(CliError::usage(format!("{flag} does not apply to `runnel certs {kind}` (see --help)"))),
        None => Ok(()),
    }
}

fn parse_days(value: Option<&str>, default: u32) -> Result<u32, CliError> {
    let Some(text) = value else { return Ok(default) };
    match text.parse::<u32>() {
        Ok(days) if (1..=MAX_DAYS).contains(&days) => Ok(days),
        _ => Err(CliError::usage(format!("--days must be a whole number from 1 to {MAX_DAYS}, got {text:?}"))),
    }
}

fn parse_ip(text: &str) -> Result<IpAddr, CliError> {
    text.parse()
        .map_err(|_| CliError::usage(format!("--ip expects an IP address such as 127.0.0.1 or ::1, got {text:?}")))
}

fn joined(args: &[OsString]) -> String {
    args.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_line(line: &str) -> Result<CertRequest, CliError> {
        parse(pico_args::Arguments::from_vec(line.split_whitespace().map(OsString::from).collect()))
    }

    fn usage_message(line: &str) -> String {
        match parse_line(line) {
            Err(CliError::Usage(message)) => message,
            other => panic!("{line:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn ca_defaults() {
        let name_of = |request| match request {
            CertRequest::Ca { out, common_name, days } => {
                assert_eq!((out, days), (PathBuf::from("certs/ca"), 3650));
                common_name
            }
            other => panic!("{other:?}"),
        };
        let (first, second) =
            (name_of(parse_line("ca --out certs/ca").unwrap()), name_of(parse_line("ca --out certs/ca").unwrap()));
        let suffix = first.strip_prefix("runnel CA ").unwrap();
        assert!(suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
        assert_ne!(first, second, "two default CAs have two names");
    }

    #[test]
    fn flags_may_come_in_any_order() {
        assert_eq!(
            parse_line("--days 7 --out x/alice client --name alice --ca x/ca").unwrap(),
            CertRequest::Client { ca: "x/ca".into(), out: "x/alice".into(), name: "alice".into(), days: 7 }
        );
    }

    #[test]
    fn server_defaults_to_loopback_names() {
        let CertRequest::Server { dns, ips, days, .. } = parse_line("server --ca ca --out srv").unwrap() else {
            panic!("not a server request")
        };
        assert_eq!(dns, ["localhost"]);
        assert_eq!(ips, ["127.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
        assert_eq!(days, 825);
    }

    #[test]
    fn server_takes_repeated_names() {
        let CertRequest::Server { dns, ips, .. } =
            parse_line("server --ca ca --out srv --ip 10.0.0.1 --dns a.example --dns b.example").unwrap()
        else {
            panic!("not a server request")
        };
        assert_eq!(dns, ["a.example", "b.example"]);
        assert_eq!(ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn command_line_mistakes_are_usage_errors_that_name_the_problem() {
        assert!(usage_message("").contains("missing certificate kind"));
        assert!(usage_message("intermediate --out x").contains("\"intermediate\""));
        assert!(usage_message("ca --out x --bogus").contains("--bogus"));
        assert!(usage_message("ca --out x extra").contains("extra"));
        assert!(usage_message("--bogus ca --out x").contains("--bogus"));
        assert!(usage_message("ca --out x --days 0").contains("--days"));
        assert!(usage_message("ca --out x --days many").contains("\"many\""));
        assert!(usage_message("ca --out x --dns localhost").contains("--dns does not apply"));
        assert!(usage_message("ca").contains("--out"));
        assert!(usage_message("client --ca ca --out x").contains("--name"));
        assert!(usage_message("server --out x").contains("--ca"));
        assert!(usage_message("server --ca ca --out x --ip localhost").contains("\"localhost\""));
    }

    #[test]
    fn help_prints_and_succeeds() {
        for line in ["--help", "ca --help", "client -h"] {
            let args = pico_args::Arguments::from_vec(line.split_whitespace().map(OsString::from).collect());
            assert!(run(args).is_ok(), "{line}");
        }
    }
}
