//! `runnel completions bash|zsh|fish`: a shell completion script, printed for the user to install
//! (`runnel completions bash > /etc/bash_completion.d/runnel`).
//!
//! The words come from the help texts themselves (every `--flag` a help names, the client's commands, the
//! certificate kinds), so a flag added to a help completes without anyone remembering this file; the server's
//! help is held to its flag table by a unit test there.

use super::CliError;

/// Subcommands of `runnel` a user types.
const TOP_COMMANDS: [&str; 5] = ["server", "client", "certs", "version", "completions"];
const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

pub fn run(mut args: pico_args::Arguments) -> Result<i32, CliError> {
    let shell: Option<String> = args.opt_free_from_str()?;
    super::finish(args)?;
    let script = match shell.as_deref() {
        Some("bash") => bash(),
        Some("zsh") => zsh(),
        Some("fish") => fish(),
        Some(other) => return Err(CliError::usage(format!("completions {other:?}: expected bash, zsh or fish"))),
        None => return Err(CliError::usage("completions needs a shell: bash, zsh or fish")),
    };
    print!("{script}");
    Ok(0)
}

/// What completes where.
struct Words {
    server_flags: Vec<String>,
    client_commands: Vec<String>,
    client_flags: Vec<String>,
    certs_kinds: Vec<String>,
    certs_flags: Vec<String>,
}

impl Words {
    fn from_help() -> Words {
        Words {
            server_flags: flags_in(super::server::USAGE),
            client_commands: first_words(super::client::USAGE, "commands:"),
            client_flags: flags_in(super::client::USAGE),
            certs_kinds: first_words(super::certs::USAGE, "Kinds:"),
            certs_flags: flags_in(super::certs::USAGE),
        }
    }
}

/// Every `--flag` (and `-f`, `-q`) a help text names, once each, sorted.
fn flags_in(help: &str) -> Vec<String> {
    let mut flags: Vec<String> = help
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | ';' | '[' | ']' | '`' | '|'))
        .filter_map(|word| {
            let flag = word.split('=').next().unwrap_or(word);
            let long = flag.len() > 2
                && flag.starts_with("--")
                && flag[2..].chars().all(|c| c.is_ascii_lowercase() || c == '-');
            let short = matches!(flag, "-f" | "-q" | "-h");
            (long && !flag.ends_with('-') && flag != "--flag-name" || short).then(|| flag.to_string())
        })
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

/// The first word of each line of the section of `help` headed `title` (up to its first blank line).
fn first_words(help: &str, title: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != title)
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next().map(String::from))
        .collect()
}

fn bash() -> String {
    let words = Words::from_help();
    let join = |words: &[String]| words.join(" ");
    format!(
        r#"# bash completion for runnel (`runnel completions bash`)
_runnel() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} word i command=
    COMPREPLY=()
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{top}" -- "$cur"))
        return
    fi
    case ${{COMP_WORDS[1]}} in
    server)
        [[ $cur == -* ]] && COMPREPLY=($(compgen -W "{server_flags}" -- "$cur")) ;;
    client)
        for ((i = 2; i < COMP_CWORD; i++)); do
            word=${{COMP_WORDS[i]}}
            case " {client_commands} " in *" $word "*) command=$word; break ;; esac
        done
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "{client_flags}" -- "$cur"))
        elif [ -z "$command" ]; then
            COMPREPLY=($(compgen -W "{client_commands}" -- "$cur"))
        fi ;;
    certs)
        if [ "$COMP_CWORD" -eq 2 ]; then
            COMPREPLY=($(compgen -W "{certs_kinds}" -- "$cur"))
        elif [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "{certs_flags}" -- "$cur"))
        fi ;;
    completions)
        COMPREPLY=($(compgen -W "{shells}" -- "$cur")) ;;
    esac
}}
complete -o default -F _runnel runnel
"#,
        top = TOP_COMMANDS.join(" "),
        server_flags = join(&words.server_flags),
        client_commands = join(&words.client_commands),
        client_flags = join(&words.client_flags),
        certs_kinds = join(&words.certs_kinds),
        certs_flags = join(&words.certs_flags),
        shells = SHELLS.join(" "),
    )
}

/// zsh runs the bash script through its bash compatibility layer.
fn zsh() -> String {
    format!("autoload -U +X bashcompinit && bashcompinit\n{}", bash())
}

fn fish() -> String {
    let words = Words::from_help();
    // File names still complete (for --cert, --key, --ca, --out...): no global `-f`.
    let mut script = String::from("# fish completion for runnel (`runnel completions fish`)\n");
    let top = TOP_COMMANDS.join(" ");
    script.push_str(&format!("complete -c runnel -n 'not __fish_seen_subcommand_from {top}' -a '{top}'\n"));
    let flags = |script: &mut String, command: &str, flags: &[String]| {
        for flag in flags {
            let option = match flag.strip_prefix("--") {
                Some(long) => format!("-l {long}"),
                None => format!("-s {}", flag.trim_start_matches('-')),
            };
            script.push_str(&format!("complete -c runnel -n '__fish_seen_subcommand_from {command}' {option}\n"));
        }
    };
    flags(&mut script, "server", &words.server_flags);
    flags(&mut script, "client", &words.client_flags);
    flags(&mut script, "certs", &words.certs_flags);
    let commands = words.client_commands.join(" ");
    script.push_str(&format!(
        "complete -c runnel -n '__fish_seen_subcommand_from client; and not __fish_seen_subcommand_from {commands}' -a '{commands}'\n"
    ));
    let kinds = words.certs_kinds.join(" ");
    script.push_str(&format!(
        "complete -c runnel -n '__fish_seen_subcommand_from certs; and not __fish_seen_subcommand_from {kinds}' -a '{kinds}'\n"
    ));
    script.push_str(&format!(
        "complete -c runnel -n '__fish_seen_subcommand_from completions' -a '{}'\n",
        SHELLS.join(" ")
    ));
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_are_those_of_the_help_texts() {
        let words = Words::from_help();
        for flag in ["--listen", "--client-ca", "--max-pids", "--default-io-read-bps", "--log-format"] {
            assert!(words.server_flags.iter().any(|f| f == flag), "{flag} in {:?}", words.server_flags);
        }
        assert!(!words.server_flags.iter().any(|f| f == "--flag-name"));
        assert_eq!(
            words.client_commands,
            ["start", "run", "status", "list", "logs", "stop", "wait", "rm", "prune", "version"]
        );
        for flag in ["--server", "--timeout", "--env", "--memory", "--no-trunc", "-q", "-f"] {
            assert!(words.client_flags.iter().any(|f| f == flag), "{flag} in {:?}", words.client_flags);
        }
        assert_eq!(words.certs_kinds, ["ca", "server", "client", "fingerprint"]);
        assert!(words.certs_flags.iter().any(|f| f == "--dns"));
    }

    /// What bash completes for `words`, the last one being completed, with the script loaded.
    fn bash_completes(words: &[&str]) -> String {
        let line = words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" ");
        let test = format!(
            "{}\nCOMP_WORDS=({line}); COMP_CWORD={}; _runnel; echo \"${{COMPREPLY[*]}}\"",
            bash(),
            words.len() - 1
        );
        let output = std::process::Command::new("bash").args(["-c", &test]).output().expect("bash");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn bash_completes_commands_flags_and_kinds() {
        assert_eq!(bash_completes(&["runnel", "cl"]), "client");
        assert_eq!(bash_completes(&["runnel", "server", "--max-job"]), "--max-job-request --max-jobs");
        assert_eq!(bash_completes(&["runnel", "client", "st"]), "start status stop");
        assert_eq!(bash_completes(&["runnel", "client", "--timeout", "5s", "lo"]), "logs");
        assert_eq!(bash_completes(&["runnel", "client", "list", "--no"]), "--no-trunc");
        assert_eq!(bash_completes(&["runnel", "client", "list", "x"]), "", "no command after a command");
        assert_eq!(bash_completes(&["runnel", "certs", "f"]), "fingerprint");
        assert_eq!(bash_completes(&["runnel", "completions", "z"]), "zsh");
    }

    /// What the real fish completes for `line` with the script loaded, in an empty directory so that no file
    /// name is among them.
    fn fish_completes(line: &str) -> Vec<String> {
        let empty = std::env::temp_dir().join(format!("runnel-fish-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let test = format!("{}\ncomplete -C '{line}'", fish());
        let output = std::process::Command::new("fish")
            .args(["--no-config", "-c", &test])
            .current_dir(&empty)
            .output()
            .expect("fish is needed for this test (make deps installs it)");
        std::fs::remove_dir(&empty).unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        stdout.lines().map(|l| l.split('\t').next().unwrap().to_string()).collect()
    }

    #[test]
    fn fish_completes_commands_flags_and_kinds() {
        assert_eq!(fish_completes("runnel cl"), ["client"]);
        assert_eq!(fish_completes("runnel client st"), ["start", "status", "stop"]);
        assert_eq!(fish_completes("runnel server --max-job"), ["--max-jobs", "--max-job-request"]);
        assert_eq!(fish_completes("runnel client list --no"), ["--no-trunc"]);
        assert_eq!(fish_completes("runnel certs f"), ["fingerprint"]);
        assert_eq!(fish_completes("runnel completions z"), ["zsh"]);
    }

    /// What the zsh script's function offers for `words` (the last being completed), called as zsh's
    /// bashcompinit calls it (`emulate -L sh`: arrays from 0), after the script registered it with compinit.
    /// zsh itself then keeps the offers that match the word, so they are not filtered here.
    fn zsh_offers(words: &[&str]) -> String {
        let line = words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" ");
        let test = format!(
            "autoload -U compinit && compinit -u -D\n{}\n[[ -n ${{_comps[runnel]}} ]] || {{ echo not registered >&2; exit 1 }}\n\
             offers() {{ emulate -L sh; setopt kshglob noshglob braceexpand; COMP_WORDS=({line}); COMP_CWORD={}; \
             _runnel; print -r -- \"${{COMPREPLY[*]}}\"; }}\noffers",
            zsh(),
            words.len() - 1
        );
        let output = std::process::Command::new("zsh")
            .args(["-f", "-c", &test])
            .output()
            .expect("zsh is needed for this test (make deps installs it)");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn zsh_registers_the_completion_and_offers_the_right_words() {
        assert_eq!(zsh_offers(&["runnel", "c"]), TOP_COMMANDS.join(" "));
        assert_eq!(zsh_offers(&["runnel", "client", "st"]), Words::from_help().client_commands.join(" "));
        assert!(zsh_offers(&["runnel", "server", "--max-job"]).split(' ').any(|w| w == "--max-job-request"));
        assert!(zsh_offers(&["runnel", "client", "list", "--no"]).split(' ').any(|w| w == "--no-trunc"));
        assert_eq!(zsh_offers(&["runnel", "client", "list", "x"]), "", "no command after a command");
        assert_eq!(zsh_offers(&["runnel", "certs", "f"]), "ca server client fingerprint");
    }

    #[test]
    fn fish_and_zsh_scripts_name_the_same_words() {
        let fish = fish();
        assert!(fish.contains("-n '__fish_seen_subcommand_from server' -l max-jobs"), "{fish}");
        assert!(fish.contains("-a 'start run status list logs stop wait rm prune version'"), "{fish}");
        assert!(fish.lines().all(|l| l.starts_with("complete -c runnel") || l.starts_with('#')), "{fish}");
    }
}
