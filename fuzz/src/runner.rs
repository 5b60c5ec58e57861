//! The fuzzing loop without libFuzzer: inputs are seeds mutated by a seeded xorshift generator (byte flips,
//! interesting values, inserts, deletes, splices with another seed, truncation) or plain random bytes, run
//! until an execution count or a time budget is reached. The same seed gives the same inputs in the same
//! order, so a failure in the test suite reproduces; a failing input is printed as hex and saved.

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::Target;

/// Longest input the runner generates.
pub const MAX_INPUT: usize = 4096;

/// How long one target runs.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Stop after this many executions...
    pub max_execs: u64,
    /// ...or after this long, whichever comes first.
    pub time: Duration,
}

/// What one run did.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub execs: u64,
    pub elapsed: Duration,
    /// The slowest single execution (a hang shows here first).
    pub slowest: Duration,
}

/// A small, fast, seedable generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    u64::MAX,
    u64::MAX - 1,
    512,
    4096,
];

/// One mutated input: a seed changed a few times, or random bytes.
pub fn generate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if seeds.is_empty() || rng.below(8) == 0 {
        let max = if rng.below(4) == 0 { MAX_INPUT } else { 256 };
        let len = rng.below(max + 1);
        return (0..len).map(|_| rng.next_u64() as u8).collect();
    }
    let mut data = seeds[rng.below(seeds.len())].clone();
    let most = if rng.below(3) == 0 { 16 } else { 4 };
    let rounds = 1 + rng.below(most);
    for _ in 0..rounds {
        mutate(rng, &mut data, seeds);
    }
    data.truncate(MAX_INPUT);
    data
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(9) {
        0 | 1 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        2 if len > 0 => {
            let at = rng.below(len);
            data[at] = rng.next_u64() as u8;
        }
        3 if len > 0 => {
            // An interesting value, 1/2/4/8 bytes little-endian.
            let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            let width = 1 << rng.below(4);
            let at = rng.below(len);
            for (i, b) in v.iter().take(width).enumerate() {
                if at + i < len {
                    data[at + i] = *b;
                }
            }
        }
        4 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
        5 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(32));
            data.drain(at..at + n);
        }
        6 if len > 0 => {
            // Copy a piece of the input elsewhere (repeats fields, duplicates headers).
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(32));
            let piece = data[from..from + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, piece);
        }
        7 if !seeds.is_empty() => {
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ => {
            let cut = rng.below(len + 1);
            data.truncate(cut);
        }
    }
}

/// Runs `target` on its seeds, then on generated inputs, within `budget`. A panic is reported with the
/// input (printed and written to `target/fuzz-failures/`) and then propagated.
pub fn run(target: &Target, seed: u64, budget: Budget) -> Stats {
    let seeds = (target.seeds)();
    let mut rng = Rng::new(seed ^ name_hash(target.name));
    let start = Instant::now();
    let mut stats = Stats {
        execs: 0,
        elapsed: Duration::ZERO,
        slowest: Duration::ZERO,
    };
    let mut i = 0usize;
    while stats.execs < budget.max_execs && (stats.execs == 0 || start.elapsed() < budget.time) {
        let input = if i < seeds.len() {
            seeds[i].clone()
        } else {
            generate(&mut rng, &seeds)
        };
        i += 1;
        let t = Instant::now();
        execute(target, &input);
        stats.slowest = stats.slowest.max(t.elapsed());
        stats.execs += 1;
    }
    stats.elapsed = start.elapsed();
    stats
}

/// Runs one input, reporting it if the target panics.
pub fn execute(target: &Target, input: &[u8]) {
    if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))) {
        let path = save_failure(target.name, input);
        eprintln!(
            "fuzz target {} panicked on a {}-byte input (saved to {}): {}",
            target.name,
            input.len(),
            path.display(),
            hex(input)
        );
        panic::resume_unwind(panic);
    }
}

fn save_failure(name: &str, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    let path = dir.join(format!("{name}-{:016x}", name_hash(&hex(input))));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(&path, input);
    path
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a, to give every target its own stream of inputs from one seed.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
