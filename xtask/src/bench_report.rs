//! Benchmark figures (median of the runs, with min–max), the printed table, `results.md` and the
//! chart (an SVG written here, converted to PNG with `rsvg-convert` from librsvg2-bin).

use std::{fmt::Write as _, fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::bench::Options;

/// One measured figure: every run's value.
pub struct Figure {
    pub section: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub values: Vec<f64>,
}

impl Figure {
    pub fn new(section: &'static str, name: &str, unit: &'static str, values: Vec<f64>) -> Self {
        Self {
            section,
            name: name.to_owned(),
            unit,
            values,
        }
    }

    pub fn median(&self) -> f64 {
        median(self.values.clone())
    }

    fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Every figure of one `cargo xtask bench` invocation.
pub struct Report {
    pub figures: Vec<Figure>,
    /// Free-form facts to print with the table (fill counts, nftset support...).
    pub notes: Vec<String>,
    pub runs: u32,
    pub load: String,
    pub elapsed: Duration,
}

/// Figures each section must produce (for the CI smoke check).
const EXPECTED: [(&str, usize); 9] = [
    // (a)..(g): qps, p50, p99.
    ("dns", 21),
    // none, eBPF 0/10k/1M, nftables 0/10k/1M, eBPF with 10 policies: TCP and UDP; the egress
    // program's run time per UDP packet and its share of a CPU during TCP, with eBPF 0/10k/1M
    // and 10 policies.
    // ... and eBPF with DNS capture, 0 hosts (TCP, UDP, the program's two).
    ("datapath", 28),
    // eBPF and nftables 0/10k/1M and eBPF with 10 policies against unfiltered runs at the same
    // moment: TCP and UDP; dns qps (g) / (b) measured next to each other.
    // ... and eBPF with DNS capture, 0 hosts: TCP and UDP, and TCP against eBPF without capture.
    ("ratio", 18),
    // (b)..(g): p50 at 1,000 qps minus the upstream's, asked right next to them.
    ("overhead", 6),
    // (b)..(g): the forwarder process's CPU time per answered query during its 1,000 qps run.
    ("cpu", 6),
    // eBPF and nftables, 1 and 8 addresses: p50 and p99; the sweeper's scan and `nettrust list`'s.
    ("commit", 10),
    // kernel map memory and daemon RSS, with 0 and with "1M" hosts.
    ("memory", 4),
    // load time and peak RSS of check-config with a big allow-list and blacklist; the daemon on
    // them: start time and RSS (and their floors), reload time, peak RSS during it, queries
    // answered across it and the slowest answer.
    ("policy", 10),
    // dns (h): p50 and p99 captured, p50 asking the listener, the paired overhead.
    ("capture", 4),
];

/// Picks the figures of one chart panel.
type Select = fn(&Figure) -> bool;

/// The chart's panels: title, figures.
const PANELS: [(&str, Select); 9] = [
    (
        "DNS throughput, 100 in flight (qps, higher is better)",
        |f| f.section == "dns" && f.unit == "qps",
    ),
    ("DNS p50 latency at 1,000 qps (µs, lower is better)", |f| {
        f.section == "dns" && f.name.contains(" p50 ")
    }),
    (
        "DNS p50 overhead over the upstream asked right next to it (µs, lower is better)",
        |f| f.section == "overhead",
    ),
    (
        "Forwarder CPU time per query at 1,000 qps (µs, lower is better)",
        |f| f.section == "cpu",
    ),
    (
        "TCP throughput from the cgroup (Gbit/s, higher is better)",
        |f| f.section == "datapath" && f.name.starts_with("TCP "),
    ),
    (
        "UDP 64-byte datagrams sent from the cgroup (kpps, higher is better)",
        |f| f.section == "datapath" && f.name.starts_with("UDP "),
    ),
    (
        "Filtered / unfiltered at the same moment, paired runs (%, higher is better)",
        |f| f.section == "ratio",
    ),
    ("Commit of one answer, p50 (µs, lower is better)", |f| {
        f.section == "commit" && f.name.ends_with(" p50")
    }),
    ("Memory (MB)", |f| f.section == "memory"),
];

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A figure's name without what its chart panel's title already says (long DNS names would be
/// cut at the left edge).
fn bar_label(name: &str) -> &str {
    [
        " p50 overhead over (a) @1k qps, paired",
        " CPU time per query @1k qps",
        " p50 @1k qps",
        " qps",
    ]
    .iter()
    .find_map(|suffix| name.strip_suffix(suffix))
    .unwrap_or(name)
}

fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    pub fn new(opts: &Options) -> Self {
        Self {
            figures: Vec::new(),
            notes: Vec::new(),
            runs: opts.runs,
            load: String::new(),
            elapsed: Duration::ZERO,
        }
    }

    pub fn add(&mut self, figure: Figure) {
        eprintln!(
            "xtask: {} {}: {} {} ({} runs)",
            figure.section,
            figure.name,
            fmt_value(figure.median()),
            figure.unit,
            figure.values.len()
        );
        self.figures.push(figure);
    }

    pub fn note(&mut self, note: String) {
        eprintln!("xtask: {note}");
        self.notes.push(note);
    }

    /// The median of the figure named `name`, if measured.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(Figure::median)
    }

    /// Ratios and overheads computed from the medians.
    fn derived(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let ratio = |a: &str, b: &str| Some(self.get(a)? / self.get(b)?);
        let q = |tag: &str| -> String {
            [
                ("a", "upstream (dnsmasq) direct"),
                ("b", "nettrust eBPF"),
                ("c", "nettrust nftables"),
                ("d", "dnsmasq forwarding"),
                ("e", "dnsmasq forwarding + nftset"),
                ("f", "minimal relay (no checks)"),
                ("g", "nettrust eBPF + policy"),
            ]
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(t, n)| format!("({t}) {n} qps"))
            .unwrap_or_default()
        };
        for tag in ["b", "c", "d", "e", "f", "g"] {
            if let Some(r) = ratio(&q(tag), &q("a")) {
                out.push((format!("dns qps ({tag}) / (a)"), format!("{r:.2}")));
            }
        }
        for tag in ["a", "b", "c", "d"] {
            if let Some(r) = ratio(&q(tag), &q("e")) {
                out.push((format!("dns qps ({tag}) / (e)"), format!("{r:.2}")));
            }
        }
        if let Some(r) = ratio(&q("g"), &q("b")) {
            out.push(("dns qps (g) / (b), medians".to_owned(), format!("{r:.3}")));
        }
        for tag in ["b", "c", "d", "e", "f", "g"] {
            let name = q(tag).replace(" qps", " p50 @1k qps");
            let base = q("a").replace(" qps", " p50 @1k qps");
            if let (Some(x), Some(a)) = (self.get(&name), self.get(&base)) {
                out.push((
                    format!("dns p50 overhead of ({tag}) over (a) @1k qps"),
                    format!("{:+.0} µs", x - a),
                ));
            }
        }
        out
    }

    /// Markdown: the table of figures, then the derived ratios.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "| section | figure | median | min – max | unit |\n|---|---|---:|---:|---|"
        );
        for f in &self.figures {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} – {} | {} |",
                f.section,
                f.name,
                fmt_value(f.median()),
                fmt_value(f.min()),
                fmt_value(f.max()),
                f.unit
            );
        }
        let derived = self.derived();
        if !derived.is_empty() {
            let _ = writeln!(md, "\n| derived (from the medians) | value |\n|---|---:|");
            for (name, value) in derived {
                let _ = writeln!(md, "| {name} | {value} |");
            }
        }
        if !self.notes.is_empty() {
            md.push('\n');
            for note in &self.notes {
                let _ = writeln!(md, "- {note}");
            }
        }
        let _ = writeln!(
            md,
            "\n{} run(s) per figure; load average at the end: {}; total time {:.0} s.",
            self.runs,
            self.load,
            self.elapsed.as_secs_f64()
        );
        md
    }

    /// Prints the table, writes `results.md`, `chart.svg` and `chart.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir)?;
        let md = self.markdown();
        println!("{md}");
        fs::write(dir.join("results.md"), &md)?;
        let svg = self.svg();
        let svg_path = dir.join("chart.svg");
        fs::write(&svg_path, svg)?;
        let png = dir.join("chart.png");
        let out = Command::new("rsvg-convert")
            .args(["--format", "png", "--background-color", "white", "-o"])
            .arg(&png)
            .arg(&svg_path)
            .output()
            .context("starting rsvg-convert (apt-get install librsvg2-bin)")?;
        if !out.status.success() {
            bail!(
                "rsvg-convert failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!(
            "xtask: wrote {}, {} and {}",
            dir.join("results.md").display(),
            svg_path.display(),
            png.display()
        );
        Ok(())
    }

    /// Horizontal bar charts, one panel per group, the median as the bar and min–max as a line.
    fn svg(&self) -> String {
        let panels: Vec<(&str, Vec<&Figure>)> = PANELS
            .into_iter()
            .map(|(title, select)| (title, self.figures.iter().filter(|f| select(f)).collect()))
            .filter(|(_, figs): &(&str, Vec<&Figure>)| !figs.is_empty())
            .collect();
        let height: f64 = panels
            .iter()
            .map(|(_, f)| 40.0 + ROW_H * f.len() as f64)
            .sum::<f64>()
            + 20.0;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
             font-family=\"DejaVu Sans, sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let mut y = 10.0;
        for (title, figs) in panels {
            let _ = writeln!(
                svg,
                "<text x=\"10\" y=\"{}\" font-weight=\"bold\" font-size=\"14\">{title}</text>",
                y + 18.0
            );
            y += 30.0;
            let top = figs
                .iter()
                .map(|f| f.max())
                .fold(0.0f64, f64::max)
                .max(f64::MIN_POSITIVE);
            for f in figs {
                bar(&mut svg, f, y, top);
                y += ROW_H;
            }
            y += 10.0;
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// Smoke check: every section produced all its figures, each a positive finite number.
    pub fn check_complete(&self) -> Result<()> {
        for (section, count) in EXPECTED {
            let figs: Vec<&Figure> = self
                .figures
                .iter()
                .filter(|f| f.section == section)
                .collect();
            if figs.len() != count {
                bail!(
                    "bench {section}: {} figures produced, {count} expected",
                    figs.len()
                );
            }
            for f in figs {
                // An overhead may come out negative when the pair's noise exceeds it.
                // A smoke run's CPU time may stay under one clock tick (0).
                let valid = |v: f64| {
                    v.is_finite()
                        && (v > 0.0
                            || section == "overhead"
                            || f.name.contains(" overhead ")
                            || (section == "cpu" && v == 0.0))
                };
                if f.values.is_empty() || !f.values.iter().all(|v| valid(*v)) {
                    bail!(
                        "bench {section}: {} has no valid value: {:?}",
                        f.name,
                        f.values
                    );
                }
            }
        }
        Ok(())
    }
}

/// The chart's width.
const WIDTH: f64 = 980.0;
/// The width of the labels, left of the bars.
const LABEL_W: f64 = 330.0;
/// The width of the longest bar.
const BAR_W: f64 = 520.0;
/// The height of a row.
const ROW_H: f64 = 22.0;

/// One figure's row at height `y`: label, bar (the median), min–max line, value; `top` is the
/// panel's largest value (the full bar).
fn bar(svg: &mut String, f: &Figure, y: f64, top: f64) {
    let scale = |v: f64| LABEL_W + BAR_W * (v / top).clamp(0.0, 1.0);
    let color = if f.name.contains("nettrust eBPF") || f.name.contains("eBPF") {
        "#2b7bb9"
    } else if f.name.contains("nftables") {
        "#e08b2c"
    } else {
        "#8a8a8a"
    };
    let median = f.median();
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
         <rect x=\"{LABEL_W}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{color}\"/>\n\
         <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{:.1}\" y=\"{}\">{} {}</text>",
        LABEL_W - 8.0,
        y + 15.0,
        escape(bar_label(&f.name)),
        y + 4.0,
        (scale(median) - LABEL_W).max(1.0),
        ROW_H - 8.0,
        scale(f.min()),
        scale(f.max()),
        y + ROW_H / 2.0,
        y + ROW_H / 2.0,
        scale(f.max()) + 6.0,
        y + 15.0,
        fmt_value(median),
        escape(f.unit)
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The median of `values` (NaN when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
