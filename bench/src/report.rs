//! Results as people and programs read them: each benchmark is a [`Section`] (a title, the load average
//! at its start and end, its metrics, free-form notes and any error), printed as a table the moment it
//! finishes and collected into one JSON document for `--json`.
//!
//! A metric keeps its raw samples; summaries are computed here, so the table and the JSON always agree.

use crate::machine::Load;
use crate::stats::{format_value, Summary};

/// One measured quantity and all its samples.
#[derive(Clone, Debug)]
pub struct Metric {
    pub name: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
}

impl Metric {
    pub fn new(name: impl Into<String>, unit: &'static str, samples: Vec<f64>) -> Metric {
        Metric {
            name: name.into(),
            unit,
            samples,
        }
    }
}

/// One benchmark's results.
#[derive(Debug)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub load_start: Option<Load>,
    pub load_end: Option<Load>,
    pub metrics: Vec<Metric>,
    pub notes: Vec<String>,
    pub error: Option<String>,
}

impl Section {
    /// Starts a section and reads the load average.
    pub fn start(id: &str, title: &str) -> Section {
        eprintln!("[hull-bench] running {id}: {title}");
        Section {
            id: id.to_string(),
            title: title.to_string(),
            load_start: Load::now(),
            load_end: None,
            metrics: Vec::new(),
            notes: Vec::new(),
            error: None,
        }
    }

    pub fn metric(&mut self, name: impl Into<String>, unit: &'static str, samples: Vec<f64>) {
        self.metrics.push(Metric::new(name, unit, samples));
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Reads the load average again and prints the table.
    pub fn finish(&mut self) {
        self.load_end = Load::now();
        print!("{}", self.render());
    }

    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut out = format!("\n== {}: {} ==\n", self.id, self.title);
        let load = |l: &Option<Load>| l.as_ref().map(|l| l.to_string()).unwrap_or_else(|| "unknown".into());
        out.push_str(&format!(
            "   load: start {}, end {}\n",
            load(&self.load_start),
            load(&self.load_end)
        ));
        if !self.metrics.is_empty() {
            let width = self
                .metrics
                .iter()
                .map(|m| m.name.chars().count())
                .max()
                .unwrap_or(6)
                .max(6);
            out.push_str(&format!(
                "   {:<width$} {:>4} {:>10} {:>10} {:>10} {:>10}  unit\n",
                "metric", "n", "median", "p90", "min", "max"
            ));
            for m in &self.metrics {
                match Summary::of(&m.samples) {
                    Some(s) => out.push_str(&format!(
                        "   {:<width$} {:>4} {:>10} {:>10} {:>10} {:>10}  {}\n",
                        m.name,
                        s.n,
                        format_value(s.median),
                        format_value(s.p90),
                        format_value(s.min),
                        format_value(s.max),
                        m.unit
                    )),
                    None => out.push_str(&format!("   {:<width$} {:>4}  (no valid samples)\n", m.name, 0)),
                }
            }
        }
        for note in &self.notes {
            out.push_str(&format!("   note: {note}\n"));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("   FAILED: {e}\n"));
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let metrics: Vec<serde_json::Value> = self
            .metrics
            .iter()
            .map(|m| {
                let s = Summary::of(&m.samples);
                serde_json::json!({
                    "name": m.name,
                    "unit": m.unit,
                    "samples": m.samples,
                    "n": s.map(|s| s.n),
                    "median": s.map(|s| s.median),
                    "p90": s.map(|s| s.p90),
                    "min": s.map(|s| s.min),
                    "max": s.map(|s| s.max),
                    "mean": s.map(|s| s.mean),
                })
            })
            .collect();
        serde_json::json!({
            "id": self.id,
            "title": self.title,
            "load_start": self.load_start.as_ref().map(Load::to_json),
            "load_end": self.load_end.as_ref().map(Load::to_json),
            "metrics": metrics,
            "notes": self.notes,
            "error": self.error,
        })
    }
}

/// Runs one benchmark into a fresh section, turning an error (or a panic in a helper) into the section's
/// error; prints the section.
pub fn run_section(id: &str, title: &str, body: impl FnOnce(&mut Section) -> crate::error::Result<()>) -> Section {
    let mut section = Section::start(id, title);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut section)));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => section.error = Some(e.message),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            section.error = Some(format!("internal failure: {what}"));
        }
    }
    section.finish();
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json_carry_the_same_summary() {
        let mut s = Section::start("t", "a test section");
        s.metric("latency", "ms", vec![3.0, 1.0, 2.0]);
        s.metric("broken", "ms", vec![]);
        s.note("a note");
        let table = s.render();
        assert!(table.contains("latency") && table.contains("2.00") && table.contains("(no valid samples)"));
        assert!(table.contains("note: a note"));
        let json = s.to_json();
        assert_eq!(json["metrics"][0]["median"], 2.0);
        assert_eq!(json["metrics"][0]["samples"].as_array().unwrap().len(), 3);
        assert!(json["metrics"][1]["median"].is_null());
    }
}
