//! The jobs the soak runs: `/bin/sh` scripts whose output is a function of a seed, so the harness knows every
//! byte each one writes. Each script takes `$0` (the run's marker, so leftover processes can be found) and `$1`
//! (the pause between bursts; the output does not depend on it).
//!
//! The expected output of each cached recipe comes from running the very same script here, outside runnel,
//! once, with no pauses. The flood's output is too large to cache and is computed instead: `seq` of 9-digit
//! numbers, ten bytes a line, so the byte at any offset is arithmetic.

use std::process::{Command, Stdio};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng;

/// Followed byte-exact jobs stay under this, below `--max-output-bytes 4M`, so a job's own retention never
/// discards what a follower has yet to read.
pub const MAX_EXACT_OUTPUT: u64 = 3584 * 1024;

/// The first number a flood writes: every line of the flood is then 9 digits and a newline.
const FLOOD_FIRST: u64 = 100_000_000;
const FLOOD_LINE: u64 = 10;
/// Lines a flood writes per burst (200 kB), one burst every [`FLOOD_PAUSE`]: about 2 MB/s per flooding job.
const FLOOD_LINES_PER_BURST: u64 = 20_000;
const FLOOD_PAUSE: &str = "0.1";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// `seq` lines, sometimes some to stderr; ends at once.
    Text,
    /// Pseudo-random bytes (AES-128-CTR of zeros) written all at once, sometimes a part to stderr.
    Binary,
    /// Pseudo-random bursts with pauses between them, for 5–30 s; every third burst to stderr in some.
    Bursts,
    /// `seq` lines at about 2 MB/s for 10–40 s: past `--max-output-bytes` within seconds.
    Flood,
}

/// What one output stream of a job must hold.
#[derive(Clone)]
pub enum Source {
    Bytes(Arc<Vec<u8>>),
    /// `count` lines of `seq`, from `first` on, each nine digits and a newline.
    Decimal {
        first: u64,
        count: u64,
    },
}

impl Source {
    pub fn len(&self) -> u64 {
        match self {
            Source::Bytes(bytes) => bytes.len() as u64,
            Source::Decimal { count, .. } => count * FLOOD_LINE,
        }
    }

    /// The expected byte at `position` (which must be below [`Source::len`]).
    fn byte_at(&self, position: u64) -> u8 {
        match self {
            Source::Bytes(bytes) => bytes[position as usize],
            Source::Decimal { first, .. } => {
                let (line, column) = (position / FLOOD_LINE, position % FLOOD_LINE);
                if column == FLOOD_LINE - 1 {
                    return b'\n';
                }
                let number = first + line;
                b'0' + (number / 10u64.pow((FLOOD_LINE - 2 - column) as u32) % 10) as u8
            }
        }
    }

    /// The index in `data` of its first byte that differs from this stream's bytes at `position` (a byte past
    /// the stream's end differs), or `None` if all match.
    pub fn first_difference(&self, position: u64, data: &[u8]) -> Option<usize> {
        let available = self.len().saturating_sub(position).min(data.len() as u64) as usize;
        if available == 0 {
            return (!data.is_empty()).then_some(0);
        }
        let differing = match self {
            Source::Bytes(bytes) => {
                let expected = &bytes[position as usize..position as usize + available];
                expected.iter().zip(data).position(|(e, d)| e != d)
            }
            Source::Decimal { .. } => (0..available).find(|&i| self.byte_at(position + i as u64) != data[i]),
        };
        differing.or((available < data.len()).then_some(available))
    }

    /// Up to `limit` positions `p` in `low..=high` where `data` is this stream's bytes at `p`.
    pub fn positions_of(&self, data: &[u8], low: u64, high: u64, limit: usize) -> Vec<u64> {
        if data.is_empty() || data.len() as u64 > self.len() {
            return Vec::new();
        }
        let high = high.min(self.len() - data.len() as u64);
        if low > high {
            return Vec::new();
        }
        match self {
            Source::Bytes(bytes) => {
                let window = &bytes[low as usize..high as usize + data.len()];
                let mut found = Vec::new();
                for (i, candidate) in window.windows(data.len()).enumerate() {
                    // The first byte alone rejects almost every position cheaply.
                    if candidate[0] == data[0] && candidate == data {
                        found.push(low + i as u64);
                        if found.len() == limit {
                            break;
                        }
                    }
                }
                found
            }
            // Only a flood writes these, and a flood writes stdout alone, so its position is never unknown.
            Source::Decimal { .. } => {
                (low..=high).filter(|&p| self.first_difference(p, data).is_none()).take(limit).collect()
            }
        }
    }

    /// `len` expected bytes from `position` (fewer at the end), for messages.
    pub fn bytes(&self, position: u64, len: usize) -> Vec<u8> {
        let end = (position + len as u64).min(self.len());
        (position..end).map(|p| self.byte_at(p)).collect()
    }
}

/// Both streams' expected output.
#[derive(Clone)]
pub struct Expected {
    pub stdout: Source,
    pub stderr: Source,
}

impl Expected {
    pub fn stream(&self, index: usize) -> &Source {
        [&self.stdout, &self.stderr][index]
    }

    pub fn total(&self) -> u64 {
        self.stdout.len() + self.stderr.len()
    }
}

/// One job the soak can start, and what it writes.
pub struct Recipe {
    /// e.g. `bursts#3`.
    pub name: String,
    pub kind: Kind,
    pub script: String,
    /// What the server's run gets as `$1`.
    pub pause: String,
    pub expected: Expected,
}

impl Recipe {
    /// `sh -c SCRIPT MARKER PAUSE`: the StartJob arguments.
    pub fn args(&self, marker: &str) -> Vec<String> {
        vec!["-c".into(), self.script.clone(), marker.into(), self.pause.clone()]
    }
}

/// Every recipe of a run, made from its seed.
pub struct Catalogue {
    pub recipes: Vec<Arc<Recipe>>,
}

/// Distinct recipes per cached kind: a few dozen seeds in all, as the expected bytes are kept in memory.
const RECIPES_PER_KIND: usize = 8;

impl Catalogue {
    /// Makes the recipes and computes every cached recipe's expected output by running it here.
    pub fn build(rng: &mut StdRng) -> Result<Catalogue, String> {
        let mut recipes = Vec::new();
        for i in 0..RECIPES_PER_KIND {
            recipes.push(text_recipe(rng, i)?);
            recipes.push(binary_recipe(rng, i)?);
            recipes.push(bursts_recipe(rng, i)?);
            recipes.push(flood_recipe(rng, i));
        }
        Ok(Catalogue { recipes: recipes.into_iter().map(Arc::new).collect() })
    }

    pub fn pick(&self, kind: Kind, rng: &mut StdRng) -> Arc<Recipe> {
        let of_kind: Vec<&Arc<Recipe>> = self.recipes.iter().filter(|r| r.kind == kind).collect();
        Arc::clone(of_kind[rng.random_range(0..of_kind.len())])
    }

    /// Bytes held for the cached recipes' expected output.
    pub fn cached_bytes(&self) -> u64 {
        let cached = |s: &Source| if let Source::Bytes(b) = s { b.len() as u64 } else { 0 };
        self.recipes.iter().map(|r| cached(&r.expected.stdout) + cached(&r.expected.stderr)).sum()
    }
}

fn hex(rng: &mut StdRng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

/// `head -c N /dev/zero | openssl enc -aes-128-ctr ...`: N pseudo-random bytes, the same for the same key and iv.
fn keystream(bytes: u64, key: &str, iv: &str) -> String {
    format!("head -c {bytes} /dev/zero | openssl enc -aes-128-ctr -nosalt -K {key} -iv {iv}")
}

fn text_recipe(rng: &mut StdRng, i: usize) -> Result<Recipe, String> {
    let first = rng.random_range(1..1_000_000u64);
    let lines = rng.random_range(1_000..120_000u64);
    let mut script = format!("seq {first} {}", first + lines - 1);
    if rng.random_bool(0.5) {
        let errors = rng.random_range(10..20_000u64);
        script +=
            &format!("; seq {} {} >&2; seq 1 {}", first + lines, first + lines + errors, rng.random_range(1..5_000));
    }
    cached_recipe(format!("text#{i}"), Kind::Text, script, "0")
}

fn binary_recipe(rng: &mut StdRng, i: usize) -> Result<Recipe, String> {
    let key = hex(rng);
    let stderr_bytes = if rng.random_bool(0.5) { rng.random_range(64 * 1024..=512 * 1024u64) } else { 0 };
    let stdout_bytes = rng.random_range(1024 * 1024..=MAX_EXACT_OUTPUT - stderr_bytes);
    let mut script = keystream(stdout_bytes, &key, &hex(rng));
    if stderr_bytes > 0 {
        script = format!("{script}; {} >&2", keystream(stderr_bytes, &key, &hex(rng)));
    }
    cached_recipe(format!("binary#{i}"), Kind::Binary, script, "0")
}

fn bursts_recipe(rng: &mut StdRng, i: usize) -> Result<Recipe, String> {
    let bursts = rng.random_range(10..=60u64);
    let seconds = rng.random_range(5.0..30.0f64);
    let burst_bytes = rng.random_range(8 * 1024..=MAX_EXACT_OUTPUT / bursts);
    let key = hex(rng);
    // The iv is the burst's number, so every burst differs; `printf %032x` is the shell's own.
    let burst = keystream(burst_bytes, &key, "$(printf %032x $i)");
    let to_stderr = if rng.random_bool(0.5) { "[ $((i % 3)) -eq 0 ]" } else { "false" };
    let script =
        format!(r#"for i in $(seq {bursts}); do if {to_stderr}; then {burst} >&2; else {burst}; fi; sleep "$1"; done"#);
    let mut recipe = cached_recipe(format!("bursts#{i}"), Kind::Bursts, script, "0")?;
    recipe.pause = format!("{:.2}", seconds / bursts as f64);
    Ok(recipe)
}

fn flood_recipe(rng: &mut StdRng, i: usize) -> Recipe {
    let seconds = rng.random_range(10..=40u64);
    let bursts = seconds * 10;
    let (first, lines) = (FLOOD_FIRST, FLOOD_LINES_PER_BURST);
    let burst = format!("seq $(({first} + i * {lines})) $(({first} + i * {lines} + {lines} - 1))");
    let script = format!(r#"i=0; while [ $i -lt {bursts} ]; do {burst}; i=$((i + 1)); sleep "$1"; done"#);
    Recipe {
        name: format!("flood#{i}"),
        kind: Kind::Flood,
        script,
        pause: FLOOD_PAUSE.into(),
        expected: Expected {
            stdout: Source::Decimal { first: FLOOD_FIRST, count: bursts * lines },
            stderr: Source::Bytes(Arc::new(Vec::new())),
        },
    }
}

/// A recipe whose expected output is what `script` writes when run here with `pause`.
fn cached_recipe(name: String, kind: Kind, script: String, pause: &str) -> Result<Recipe, String> {
    let output = Command::new("/bin/sh")
        .args(["-c", &script, "soak-expected", pause])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {name} here: {e}"))?;
    if !output.status.success() {
        return Err(format!("{name} ({script}) failed here: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let total = (output.stdout.len() + output.stderr.len()) as u64;
    assert!(total <= MAX_EXACT_OUTPUT, "{name} writes {total} bytes, over {MAX_EXACT_OUTPUT}");
    Ok(Recipe {
        name,
        kind,
        script,
        pause: pause.into(),
        expected: Expected {
            stdout: Source::Bytes(Arc::new(output.stdout)),
            stderr: Source::Bytes(Arc::new(output.stderr)),
        },
    })
}
