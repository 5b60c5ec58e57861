//! The one counter type every device's metrics are made of, and the snapshot a reader (the API, a metrics
//! file) takes of them. A device declares its counters once with [`device_metrics!`]: that gives the
//! struct of [`Counter`]s the device core bumps, and [`DeviceMetrics::snapshot`], the (name, value) pairs
//! in declaration order, ready to serialize as one JSON object per device (the shape of Firecracker's
//! metrics file) or to diff against an earlier snapshot ([`MetricsSnapshot::since`]).
//!
//! Values are whatever the guest caused: statistics, never invariants. Counters use relaxed atomics, so
//! a snapshot taken while the device runs may mix counts from slightly different moments.

use std::sync::atomic::{AtomicU64, Ordering};

/// A count of events or bytes that only grows, written by a device core and read from any thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Counts one more.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Counts `n` more (wraps at `u64::MAX`, which no device reaches).
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every counter of one device at one moment: (name, value) in declaration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    counters: Vec<(&'static str, u64)>,
}

impl MetricsSnapshot {
    /// A snapshot of the given (name, value) pairs.
    pub fn new(counters: Vec<(&'static str, u64)>) -> Self {
        MetricsSnapshot { counters }
    }

    /// The counters, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.counters.iter().copied()
    }

    /// The value of counter `name`, if the device has one of that name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// What each counter gained since `earlier` (Firecracker's metrics file reports such deltas per
    /// flush); a counter `earlier` lacks counts from zero.
    pub fn since(&self, earlier: &MetricsSnapshot) -> MetricsSnapshot {
        let counters = self
            .iter()
            .map(|(name, now)| (name, now.wrapping_sub(earlier.get(name).unwrap_or(0))))
            .collect();
        MetricsSnapshot { counters }
    }
}

/// Per-device counters a reader can snapshot without knowing the device.
pub trait DeviceMetrics: Send + Sync {
    /// Every counter's current value, named as its field.
    fn snapshot(&self) -> MetricsSnapshot;
}

/// Declares a device's metrics: a struct with one public [`Counter`] per listed field (doc comments
/// allowed), `Default`, and [`DeviceMetrics`] naming each counter after its field. Exported for the
/// counters kept outside this crate (the VMM's vCPU exits).
#[macro_export]
macro_rules! device_metrics {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $crate::virtio::metrics::Counter, )*
        }

        impl $crate::virtio::metrics::DeviceMetrics for $name {
            fn snapshot(&self) -> $crate::virtio::metrics::MetricsSnapshot {
                $crate::virtio::metrics::MetricsSnapshot::new(vec![$( (stringify!($field), self.$field.get()), )*])
            }
        }
    };
}
pub use device_metrics;

#[cfg(test)]
mod tests {
    use super::*;

    device_metrics! {
        /// Two counters, for the test.
        pub struct Pair {
            /// The first.
            first,
            second,
        }
    }

    #[test]
    fn snapshot_names_counters_in_declaration_order() {
        let m = Pair::default();
        m.first.inc();
        m.second.add(40);
        m.second.inc();
        let snap = m.snapshot();
        assert_eq!(snap.iter().collect::<Vec<_>>(), vec![("first", 1), ("second", 41)]);
        assert_eq!(snap.get("second"), Some(41));
        assert_eq!(snap.get("third"), None);
    }

    #[test]
    fn since_gives_what_each_counter_gained() {
        let m = Pair::default();
        m.first.add(3);
        let before = m.snapshot();
        m.first.add(2);
        m.second.inc();
        let delta = m.snapshot().since(&before);
        assert_eq!(delta.iter().collect::<Vec<_>>(), vec![("first", 2), ("second", 1)]);
        assert_eq!(m.snapshot().since(&MetricsSnapshot::default()), m.snapshot());
    }
}
