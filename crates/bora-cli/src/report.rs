//! A routing report in a directory: `summary.json` (the numbers of
//! `bora_engine::RouteSummary`), each figure as PNG and SVG (plotters; text in the DejaVu Sans
//! font the binary carries), and `report.html`, one self-contained page (the SVGs inline, no
//! network) that opens in a browser.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use bora_engine::SummaryNumbers;
use plotters::coord::Shift;
use plotters::prelude::*;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Writes the report of `n` into `dir` (created if missing); `title` heads the page.
pub fn write_report(dir: &Path, title: &str, n: &SummaryNumbers) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Registering twice is harmless; a font that does not parse is a bug of the build.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(n)?)?;
    let mut figures: Vec<(&str, String, &str)> = Vec::new();
    let mut plot = |stem: &'static str,
                    title: String,
                    caption: &'static str,
                    draw: &dyn Fn(DrawingArea<SVGBackend, Shift>) -> Result<()>,
                    draw_png: &dyn Fn(DrawingArea<BitMapBackend, Shift>) -> Result<()>|
     -> Result<()> {
        let svg_path = dir.join(format!("{stem}.svg"));
        {
            let root = SVGBackend::new(&svg_path, (900, 560)).into_drawing_area();
            draw(root)?;
        }
        let png_path = dir.join(format!("{stem}.png"));
        {
            let root = BitMapBackend::new(&png_path, (900, 560)).into_drawing_area();
            draw_png(root)?;
        }
        figures.push((stem, title, caption));
        Ok(())
    };
    let layers: Vec<String> = (0..n.layers).map(|l| l.to_string()).collect();
    plot(
        "shares",
        "Each expert's share of its layer's choices".into(),
        "Rows are layers, columns experts; the uniform share is 1/E.",
        &|a| heatmap(a, "share of choices", &n.shares, "expert", "layer"),
        &|a| heatmap(a, "share of choices", &n.shares, "expert", "layer"),
    )?;
    let mean_coact = mean_matrix(&n.coactivation);
    plot(
        "coactivation",
        "How often two experts are chosen together (mean over layers)".into(),
        "The share of tokens whose choices in a layer include both experts.",
        &|a| heatmap(a, "share of tokens", &mean_coact, "expert", "expert"),
        &|a| heatmap(a, "share of tokens", &mean_coact, "expert", "expert"),
    )?;
    let mut per_layer = vec![
        ("imbalance (hottest share x E)", n.imbalance.clone()),
        ("load entropy (bits)", n.load_entropy_bits.clone()),
        ("routing change rate", n.change_rate.clone()),
    ];
    if let Some(r) = &n.router_entropy_bits {
        per_layer.push(("router entropy per token (bits)", r.clone()));
    }
    plot(
        "per_layer",
        "Imbalance, entropy and routing changes by layer".into(),
        "The change rate is the share of tokens routed to other experts than the token before them: what an expert cache sees.",
        &|a| lines(a, "by layer", "layer", &per_layer),
        &|a| lines(a, "by layer", "layer", &per_layer),
    )?;
    let hottest: Vec<(String, Vec<f64>)> = (0..n.layers)
        .map(|l| {
            (
                format!("layer {l}"),
                n.load_series
                    .iter()
                    .map(|p| p[l].iter().copied().fold(0.0, f64::max))
                    .collect(),
            )
        })
        .collect();
    let series: Vec<(&str, Vec<f64>)> = hottest
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    plot(
        "load_series",
        format!(
            "The hottest expert's share over time ({} tokens a point)",
            n.series_window
        ),
        "Per layer, the largest expert share in each window of tokens.",
        &|a| lines(a, "hottest share", "window", &series),
        &|a| lines(a, "hottest share", "window", &series),
    )?;
    let _ = layers;
    html(dir, title, n, &figures)
}

fn mean_matrix(m: &[Vec<Vec<f64>>]) -> Vec<Vec<f64>> {
    let Some(first) = m.first() else {
        return Vec::new();
    };
    let mut out = vec![vec![0.0; first.first().map_or(0, Vec::len)]; first.len()];
    for layer in m {
        for (o, r) in out.iter_mut().zip(layer) {
            for (x, v) in o.iter_mut().zip(r) {
                *x += v / m.len() as f64;
            }
        }
    }
    out
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a figure: {e:?}")
}

/// White to dark blue.
fn shade(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * v).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

fn heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    label: &str,
    rows: &[Vec<f64>],
    x: &str,
    y: &str,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (h, w) = (rows.len(), rows.first().map_or(0, Vec::len));
    let max = rows
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(1e-12);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{label} (darkest: {max:.3})"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(
            (0..(w as u32).saturating_sub(1)).into_segmented(),
            (0..(h as u32).saturating_sub(1)).into_segmented(),
        )
        .map_err(err)?;
    let label = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => i.to_string(),
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x)
        .y_desc(y)
        .x_labels(w.min(64))
        .y_labels(h.min(64))
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(rows.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(c, &v)| {
                Rectangle::new(
                    [
                        (SegmentValue::Exact(c as u32), SegmentValue::Exact(r as u32)),
                        (
                            SegmentValue::Exact(c as u32 + 1),
                            SegmentValue::Exact(r as u32 + 1),
                        ),
                    ],
                    shade(v / max).filled(),
                )
            })
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    label: &str,
    x: &str,
    series: &[(&str, Vec<f64>)],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let len = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(label, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(len - 1) as f64, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x)
        .x_labels(len.min(24))
        .x_label_formatter(&|v| format!("{}", v.round() as i64))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, (name, v)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(k, &y)| (k as f64, y)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html(
    dir: &Path,
    title: &str,
    n: &SummaryNumbers,
    figures: &[(&str, String, &str)],
) -> Result<()> {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         figure{{margin:2em 0}}figcaption{{color:#555}}</style></head><body>\
         <h1>{t}</h1><p>{tok} tokens, {l} layers of {e} experts.</p>\
         <table><tr><th>layer</th><th>imbalance</th><th>load entropy (bits)</th><th>change rate</th>{rh}</tr>",
        t = escape(title),
        tok = n.tokens,
        l = n.layers,
        e = n.experts,
        rh = if n.router_entropy_bits.is_some() {
            "<th>router entropy (bits)</th>"
        } else {
            ""
        }
    );
    for l in 0..n.layers {
        let _ = write!(
            page,
            "<tr><td>{l}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td>{}</tr>",
            n.imbalance[l],
            n.load_entropy_bits[l],
            n.change_rate[l],
            n.router_entropy_bits
                .as_ref()
                .map(|r| format!("<td>{:.3}</td>", r[l]))
                .unwrap_or_default()
        );
    }
    page.push_str("</table>");
    for (stem, title, caption) in figures {
        let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg")))?;
        let svg = svg.trim_start_matches(|c| c != '<');
        let svg = match svg.strip_prefix("<?xml") {
            Some(rest) => rest.split_once("?>").map_or(rest, |(_, r)| r),
            None => svg,
        };
        let _ = write!(
            page,
            "<figure id=\"{stem}\"><h2>{}</h2>{svg}<figcaption>{} ({stem}.png, {stem}.svg)</figcaption></figure>",
            escape(title),
            escape(caption)
        );
    }
    page.push_str("</body></html>\n");
    std::fs::write(dir.join("report.html"), page)?;
    Ok(())
}
