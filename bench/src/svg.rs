//! A bar chart as SVG text, written by hand (no plotting crate): one panel per metric, one bar per VMM at its
//! median, with a whisker from p10 to p90 and the median written above it. Used by `compare --svg`.
//!
//! Every piece of text that goes into the document (titles, units, VMM names) is escaped; numbers that are not
//! finite are drawn as an empty bar with "n/a".

use std::fmt::Write as _;

use crate::stats::{format_count, format_value};

/// One bar: a VMM's median and spread for one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub label: String,
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
}

/// One metric's panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub title: String,
    pub unit: String,
    /// The values are counts: written without decimals when whole.
    pub whole_numbers: bool,
    pub bars: Vec<Bar>,
}

const PANEL_W: f64 = 300.0;
const PANEL_H: f64 = 230.0;
const COLUMNS: usize = 3;
const MARGIN: f64 = 16.0;
const HEADER_H: f64 = 64.0;
/// Inside a panel: room for its title at the top and the VMM names at the bottom.
const PLOT_TOP: f64 = 44.0;
const PLOT_BOTTOM: f64 = 36.0;
const PLOT_LEFT: f64 = 16.0;
/// One colour per bar position: hull first, then the peers.
const COLOURS: [&str; 4] = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1"];

/// Escapes text for an XML text node or attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The whole document: a title, a subtitle line (conditions, load) and the panels in rows of three.
pub fn render(title: &str, subtitle: &str, panels: &[Panel]) -> String {
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let cols = panels.len().clamp(1, COLUMNS);
    let width = MARGIN + cols as f64 * (PANEL_W + MARGIN);
    let height = HEADER_H + rows as f64 * (PANEL_H + MARGIN);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN}" y="26" font-size="17" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{MARGIN}" y="48" font-size="11" fill="#444">{}</text>"##,
        escape(subtitle)
    );
    for (i, panel) in panels.iter().enumerate() {
        let x = MARGIN + (i % COLUMNS) as f64 * (PANEL_W + MARGIN);
        let y = HEADER_H + (i / COLUMNS) as f64 * (PANEL_H + MARGIN);
        render_panel(&mut svg, panel, x, y);
    }
    svg.push_str("</svg>\n");
    svg
}

fn render_panel(svg: &mut String, panel: &Panel, x: f64, y: f64) {
    let _ = writeln!(svg, r#"<g class="panel" transform="translate({x},{y})">"#);
    let _ = writeln!(
        svg,
        r##"<rect width="{PANEL_W}" height="{PANEL_H}" fill="#fafafa" stroke="#ccc"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="13" font-weight="bold">{}</text>"#,
        escape(&panel.title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="10" y="35" font-size="10" fill="#555">{} (bar: median; whisker: p10 to p90)</text>"##,
        escape(&panel.unit)
    );
    let fmt = |v: f64| {
        if panel.whole_numbers {
            format_count(v)
        } else {
            format_value(v)
        }
    };
    let top = panel
        .bars
        .iter()
        .flat_map(|b| [b.median, b.p90])
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let scale_max = if top > 0.0 { top * 1.15 } else { 1.0 };
    let plot_h = PANEL_H - PLOT_TOP - PLOT_BOTTOM;
    let base = PANEL_H - PLOT_BOTTOM;
    let n = panel.bars.len().max(1) as f64;
    let slot = (PANEL_W - 2.0 * PLOT_LEFT) / n;
    let bar_w = (slot * 0.55).min(70.0);
    let to_y = |v: f64| base - (v.max(0.0) / scale_max) * plot_h;
    let _ = writeln!(
        svg,
        r##"<line x1="{PLOT_LEFT}" y1="{base}" x2="{}" y2="{base}" stroke="#888"/>"##,
        PANEL_W - PLOT_LEFT
    );
    for (i, bar) in panel.bars.iter().enumerate() {
        let cx = PLOT_LEFT + slot * (i as f64 + 0.5);
        let colour = COLOURS[i % COLOURS.len()];
        let label = escape(&bar.label);
        let _ = writeln!(
            svg,
            r#"<text x="{cx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{label}</text>"#,
            base + 16.0
        );
        if !bar.median.is_finite() {
            let _ = writeln!(
                svg,
                r##"<text x="{cx:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#888">n/a</text>"##,
                base - 6.0
            );
            continue;
        }
        let top_y = to_y(bar.median);
        let _ = writeln!(
            svg,
            r#"<rect class="bar" x="{:.1}" y="{top_y:.1}" width="{bar_w:.1}" height="{:.1}" fill="{colour}"><title>{label}: median {} {}, p10 {}, p90 {}</title></rect>"#,
            cx - bar_w / 2.0,
            base - top_y,
            fmt(bar.median),
            escape(&panel.unit),
            fmt(bar.p10),
            fmt(bar.p90),
        );
        let mut label_y = top_y - 5.0;
        if bar.p10.is_finite() && bar.p90.is_finite() {
            let (y10, y90) = (to_y(bar.p10), to_y(bar.p90));
            let cap = bar_w / 4.0;
            let _ = writeln!(
                svg,
                r##"<path class="whisker" d="M{cx:.1} {y10:.1}V{y90:.1}M{:.1} {y10:.1}H{:.1}M{:.1} {y90:.1}H{:.1}" stroke="#222" stroke-width="1.5" fill="none"/>"##,
                cx - cap,
                cx + cap,
                cx - cap,
                cx + cap
            );
            label_y = label_y.min(y90 - 5.0);
        }
        let _ = writeln!(
            svg,
            r#"<text x="{cx:.1}" y="{label_y:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            fmt(bar.median)
        );
    }
    svg.push_str("</g>\n");
}

/// A minimal well-formedness check for the documents [`render`] writes: every tag is closed in order, the
/// root is `<svg>`, attribute values are quoted, and `&` starts only the five predefined entities. Returns the
/// number of elements with `class="panel"`.
#[cfg(test)]
pub fn check_well_formed(doc: &str) -> std::result::Result<usize, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut panels = 0;
    let mut rest = doc.trim();
    let mut seen_root = false;
    while !rest.is_empty() {
        match rest.find('<') {
            None => {
                check_text(rest)?;
                break;
            }
            Some(i) => {
                check_text(&rest[..i])?;
                if stack.is_empty() && seen_root {
                    return Err("content after the root element".into());
                }
                rest = &rest[i..];
            }
        }
        let end = rest.find('>').ok_or("unterminated tag")?;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or_else(|| format!("</{name}> closes nothing"))?;
            if open != name.trim() {
                return Err(format!("<{open}> closed by </{name}>"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name = body.split_whitespace().next().ok_or("empty tag")?.to_string();
        if !seen_root && name != "svg" {
            return Err(format!("root element is <{name}>, not <svg>"));
        }
        seen_root = true;
        if body.matches('"').count() & 1 == 1 {
            return Err(format!("unbalanced quotes in <{body}>"));
        }
        if body.contains(r#"class="panel""#) {
            panels += 1;
        }
        if !self_closing {
            stack.push(name);
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed elements: {stack:?}"));
    }
    if !seen_root {
        return Err("no root element".into());
    }
    Ok(panels)
}

#[cfg(test)]
fn check_text(text: &str) -> std::result::Result<(), String> {
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        rest = &rest[i..];
        if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
            .iter()
            .any(|e| rest.starts_with(e))
        {
            return Err(format!("bare & in {text:?}"));
        }
        rest = &rest[1..];
    }
    if text.contains('>') {
        return Err(format!("bare > in {text:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(title: &str, bars: &[(&str, f64, f64, f64)]) -> Panel {
        Panel {
            title: title.into(),
            unit: "ms".into(),
            whole_numbers: false,
            bars: bars
                .iter()
                .map(|&(l, m, a, b)| Bar {
                    label: l.into(),
                    median: m,
                    p10: a,
                    p90: b,
                })
                .collect(),
        }
    }

    #[test]
    fn the_chart_is_well_formed_with_one_panel_per_metric() {
        let panels = vec![
            panel("spawn → API", &[("hull", 4.0, 3.5, 5.0), ("QEMU", 40.0, 38.0, 45.0)]),
            panel(
                "VM build <&>",
                &[("hull", 8.0, 7.0, 9.0), ("QEMU", f64::NAN, f64::NAN, f64::NAN)],
            ),
            panel("RSS", &[("hull", 4.2, 4.2, 4.3), ("QEMU \"x\"", 33.0, 32.0, 34.0)]),
            panel("PSS", &[("hull", 1.0, 1.0, 1.0)]),
        ];
        let doc = render("hull vs QEMU", "load 5.3 & rising", &panels);
        assert_eq!(check_well_formed(&doc), Ok(4));
        assert_eq!(doc.matches(r#"class="bar""#).count(), 6, "one bar per finite median");
        assert_eq!(doc.matches(r#"class="whisker""#).count(), 6);
        assert!(doc.contains("VM build &lt;&amp;&gt;") && doc.contains("n/a"));
        assert!(render("empty", "", &[]).starts_with("<svg"));
        assert_eq!(check_well_formed(&render("empty", "", &[])), Ok(0));
    }

    #[test]
    fn the_checker_rejects_broken_documents() {
        assert!(check_well_formed("<svg><g></svg>").is_err());
        assert!(check_well_formed("<svg><g class=\"panel\"></g>").is_err());
        assert!(check_well_formed("<svg>a & b</svg>").is_err());
        assert!(check_well_formed("<html></html>").is_err());
        assert!(check_well_formed("<svg x=\"1></svg>").is_err());
        assert_eq!(check_well_formed("<svg><g class=\"panel\"><rect/></g></svg>"), Ok(1));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("tab\there\u{1}"), "tab\there ");
    }
}
