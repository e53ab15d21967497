//! `--plot FILE`: a latency picture as a self-contained SVG.
//!
//! The classic HdrHistogram percentile plot: latency against percentile on
//! a scale that stretches the tail (50 %, 90 %, 99 %, 99.9 %, ... equally
//! spaced), one line per series, so the server and the relay (or a quiet
//! and a stormy window) are compared at every percentile, not only p50
//! and p99. Written by hand: a few lines of SVG need no plotting library.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Deepest percentile drawn: 99.999 %.
const MAX_NINES: f64 = 5.0;
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Where percentile `q` (0..1) lies on the x axis, in "nines" (0 at 0 %,
/// 1 at 90 %, 2 at 99 %, ...).
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        MAX_NINES
    } else {
        (-(1.0 - q).log10()).min(MAX_NINES)
    }
}

/// The (nines, microseconds) points of a histogram, from 0 % to its max.
fn points(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(f64, u64)> = h
        .iter_quantiles(5)
        .map(|v| {
            (
                nines(v.quantile_iterated_to()),
                h.highest_equivalent(v.value_iterated_to()),
            )
        })
        .take_while(|(x, _)| *x < MAX_NINES)
        .collect();
    out.push((nines(1.0).min(MAX_NINES), h.max()));
    out
}

/// A round step for an axis from 0 to `max`, about five ticks.
fn step(max: f64) -> f64 {
    let raw = (max / 5.0).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// The SVG text for `series` (a name and its latency histogram, in µs).
pub fn latency_svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let lines: Vec<(&str, Vec<(f64, u64)>)> =
        series.iter().map(|(name, h)| (*name, points(h))).collect();
    let max_us = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, us)| *us))
        .max()
        .unwrap_or(1)
        .max(1);
    let max_ms = max_us as f64 / 1000.0;
    let y_step = step(max_ms);
    let y_top = (max_ms / y_step).ceil().max(1.0) * y_step;
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |n: f64| LEFT + n / MAX_NINES * pw;
    let y = |ms: f64| TOP + ph - ms / y_top * ph;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (n, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let xn = x(n as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{xn:.1}" y1="{TOP}" x2="{xn:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xn:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + ph,
            TOP + ph + 18.0
        );
    }
    let mut ms = 0.0;
    while ms <= y_top + y_step / 2.0 {
        let yv = y(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yv:.1}" x2="{:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yv + 4.0,
            trim(ms)
        );
        ms += y_step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">delivery latency (ms)</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 10.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    for (i, (name, pts)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(n, us)| format!("{:.1},{:.1}", x(*n), y(*us as f64 / 1000.0)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = TOP + 16.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_has_one_line_per_series_reaching_each_maximum() {
        let mut quiet = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
        let mut storm = quiet.clone();
        for us in 1..=1000u64 {
            quiet.record(100 + us % 50).expect("record");
            storm.record(100 + us).expect("record");
        }
        storm.record(25_000).expect("record");
        let svg = latency_svg("a <test>", &[("quiet", &quiet), ("storm", &storm)]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;test&gt;"));
        // the y axis reaches past the slowest message (25 ms)
        assert!(svg.contains(">25<") || svg.contains(">30<"), "{svg}");
        // points lie inside the picture
        for pts in svg.split("points=\"").skip(1) {
            let pts = pts.split('"').next().unwrap_or("");
            for p in pts.split(' ') {
                let (x, y) = p.split_once(',').expect("x,y");
                let (x, y): (f64, f64) = (x.parse().expect("x"), y.parse().expect("y"));
                assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
                assert!((TOP - 0.5..=HEIGHT - BOTTOM + 0.5).contains(&y), "{y}");
            }
        }
    }

    #[test]
    fn axis_steps_are_round() {
        assert_eq!(step(1.0), 0.2);
        assert_eq!(step(7.3), 2.0);
        assert_eq!(step(25.0), 5.0);
    }
}
