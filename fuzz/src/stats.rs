//! What the inputs reached, summed over a run: the device counters (requests parsed, packets moved,
//! errors) after each virtio input. A run whose inputs never got past the first check shows it here.

use std::collections::BTreeMap;
use std::sync::Mutex;

use devices::virtio::{DeviceMetrics, MetricsSnapshot};

static TOTALS: Mutex<BTreeMap<(&'static str, &'static str), u64>> = Mutex::new(BTreeMap::new());

/// Adds a device's counters to the totals of `target`.
pub fn record(target: &'static str, metrics: Option<std::sync::Arc<dyn DeviceMetrics>>) {
    // Under libFuzzer (`--cfg fuzzing`) coverage says what was reached; the name lookups would only add noise.
    if cfg!(fuzzing) {
        return;
    }
    let Some(m) = metrics else { return };
    add(target, &m.snapshot());
}

fn add(target: &'static str, snapshot: &MetricsSnapshot) {
    let mut totals = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    for (name, value) in snapshot.iter() {
        *totals.entry((target, name)).or_default() += value;
    }
}

/// The non-zero totals of `target`, as `name=value` pairs.
pub fn summary(target: &str) -> String {
    let totals = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    totals
        .iter()
        .filter(|((t, _), v)| *t == target && **v > 0)
        .map(|((_, name), v)| format!("{name}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}
