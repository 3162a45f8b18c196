//! The report as one self-contained HTML page: inline CSS, four inline SVG charts drawn with
//! plotters' SVG backend, tables; no script and no reference to anything outside the page. Every
//! string that comes from data (column names) is HTML-escaped.

use std::fmt::Write;

use plotters::prelude::*;

use super::{Report, psi_grade};
use crate::error::DataError;

const CHART: (u32, u32) = (520, 400);
const BAD: RGBColor = RGBColor(200, 40, 40);
const GOOD: RGBColor = RGBColor(40, 90, 190);
const GREY: RGBColor = RGBColor(150, 150, 150);

/// `text` safe in HTML text and in quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn chart_error(e: impl std::fmt::Display) -> DataError {
    DataError::Invalid(format!("cannot draw a report chart: {e}"))
}

/// Draws into an SVG string of [`CHART`] size. plotters writes the SVG namespace as an `xmlns`
/// URL; HTML puts inline `<svg>` in that namespace by itself, so it is dropped and the page holds
/// no URL at all.
fn svg(
    draw: impl FnOnce(DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<String, DataError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, CHART).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        draw(root.clone()).map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(out.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1))
}

fn legend(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

fn roc_chart(r: &Report) -> Result<String, DataError> {
    svg(|root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("ROC curve (AUC {:.4})", r.auc), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("False positive rate (goods)")
            .y_desc("True positive rate (bads)")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], GREY.stroke_width(1)))
            .map_err(|e| e.to_string())?
            .label("random")
            .legend(legend(GREY));
        chart
            .draw_series(LineSeries::new(r.roc.iter().map(|p| (p[0], p[1])), BAD.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("model")
            .legend(legend(BAD));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })
}

fn ks_chart(r: &Report) -> Result<String, DataError> {
    svg(|root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("KS curve (KS {:.4})", r.ks), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("Share of rows, highest scores first")
            .y_desc("Cumulative share of class")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(r.ks_curve.iter().map(|p| (p[0], p[1])), BAD.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("bads (TPR)")
            .legend(legend(BAD));
        chart
            .draw_series(LineSeries::new(r.ks_curve.iter().map(|p| (p[0], p[2])), GOOD.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("goods (FPR)")
            .legend(legend(GOOD));
        // The widest gap, at the sampled point closest to it.
        if let Some(p) = r.ks_curve.iter().max_by(|a, b| (a[1] - a[2]).abs().total_cmp(&(b[1] - b[2]).abs())) {
            chart
                .draw_series(LineSeries::new([(p[0], p[1]), (p[0], p[2])], BLACK.stroke_width(1)))
                .map_err(|e| e.to_string())?
                .label("KS")
                .legend(legend(BLACK));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })
}

fn distribution_chart(r: &Report) -> Result<String, DataError> {
    let d = &r.distribution;
    let (lo, hi) = (d.edges[0], d.edges[d.edges.len() - 1]);
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, hi + 0.5) };
    let top = d.bads.iter().chain(&d.goods).fold(0.0f64, |m, &v| m.max(v)) * 1.1;
    let steps = |shares: &[f64]| -> Vec<(f64, f64)> {
        let mut pts = vec![(d.edges[0], 0.0)];
        for (i, &s) in shares.iter().enumerate() {
            pts.push((d.edges[i], s));
            pts.push((d.edges[i + 1], s));
        }
        pts.push((d.edges[d.edges.len() - 1], 0.0));
        pts
    };
    svg(|root| {
        let mut chart = ChartBuilder::on(&root)
            .caption("Score distribution by class", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi, 0f64..top.max(1e-9))
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("Score").y_desc("Share of the class's rows").draw().map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(steps(&d.goods), GOOD.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("goods (0)")
            .legend(legend(GOOD));
        chart
            .draw_series(LineSeries::new(steps(&d.bads), BAD.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("bads (1)")
            .legend(legend(BAD));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })
}

fn gain_chart(r: &Report) -> Result<String, DataError> {
    let n = r.rows as f64;
    let mut gain = vec![(0.0, 0.0)];
    gain.extend(r.deciles.iter().map(|d| (d.cumulative_rows as f64 / n, d.cumulative_gain)));
    let max_lift = r.deciles.iter().filter_map(|d| d.lift).fold(1.0f64, f64::max) * 1.1;
    svg(|root| {
        let (left, right) = root.split_horizontally(CHART.0 / 2);
        let mut chart = ChartBuilder::on(&left)
            .caption("Cumulative gain", ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(40)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_desc("Share of rows")
            .y_desc("Share of bads")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], GREY.stroke_width(1)))
            .map_err(|e| e.to_string())?;
        chart.draw_series(LineSeries::new(gain, BAD.stroke_width(2))).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&right)
            .caption("Lift by decile", ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(40)
            .build_cartesian_2d(0.5f64..10.5f64, 0f64..max_lift)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(10)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("Decile (1 = highest scores)")
            .y_desc("Lift")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(r.deciles.iter().filter_map(|d| {
                let x = d.decile as f64;
                d.lift.map(|l| Rectangle::new([(x - 0.35, 0.0), (x + 0.35, l)], BAD.mix(0.7).filled()))
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new([(0.5, 1.0), (10.5, 1.0)], GREY.stroke_width(1)))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

fn num(v: f64) -> String {
    format!("{v:.4}")
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), num)
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1100px}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}\
th{background:#eee}.charts{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}\
figcaption{font-size:0.9em;color:#555}code{background:#f3f3f3}";

/// The report as an HTML page.
pub fn render_html(r: &Report) -> Result<String, DataError> {
    let charts = [
        ("roc-chart", "ROC curve", roc_chart(r)?),
        ("ks-chart", "KS curve", ks_chart(r)?),
        ("distribution-chart", "Score distribution by class", distribution_chart(r)?),
        ("gain-chart", "Cumulative gain and lift by decile", gain_chart(r)?),
    ];
    let mut h = String::with_capacity(256 << 10);
    // `write!` into a String cannot fail.
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Model evaluation report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>Model evaluation report</h1>\n<p>Score column <code>{}</code>, label column <code>{}</code> \
         (1 = bad). Higher scores mean more likely bad.</p>\n",
        escape(&r.score_column),
        escape(&r.label_column)
    );
    let _ = write!(
        h,
        "<h2>Summary</h2>\n<table id=\"summary\">\n<tr><th>Rows</th><td>{}</td></tr>\n<tr><th>Bads (1)</th><td>{}</td></tr>\n\
         <tr><th>Goods (0)</th><td>{}</td></tr>\n<tr><th>Bad rate</th><td>{}</td></tr>\n<tr><th>AUC</th><td>{}</td></tr>\n\
         <tr><th>Gini</th><td>{}</td></tr>\n<tr><th>KS</th><td>{} (at score ≥ {})</td></tr>\n",
        r.rows,
        r.bads,
        r.goods,
        num(r.bad_rate),
        num(r.auc),
        num(r.gini),
        num(r.ks),
        num(r.ks_score)
    );
    match &r.psi {
        Some(p) => {
            let _ = writeln!(h, "<tr><th>PSI</th><td>{} ({})</td></tr>", num(p.value), psi_grade(p.value));
        }
        None => h.push_str("<tr><th>PSI</th><td>no baseline given</td></tr>\n"),
    }
    h.push_str("</table>\n<h2>Charts</h2>\n<div class=\"charts\">\n");
    for (id, title, svg) in &charts {
        let _ = write!(h, "<figure id=\"{id}\">\n{svg}<figcaption>{title}</figcaption>\n</figure>\n");
    }
    h.push_str("</div>\n<h2>Lift and gain by decile</h2>\n<table id=\"deciles\">\n<tr><th>Decile</th><th>Rows</th><th>Bads</th>\
        <th>Goods</th><th>Min score</th><th>Max score</th><th>Bad rate</th><th>Lift</th><th>Cumulative rows</th>\
        <th>Cumulative bads</th><th>Cumulative gain</th><th>Cumulative lift</th></tr>\n");
    for d in &r.deciles {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            d.decile,
            d.rows,
            d.bads,
            d.goods,
            opt(d.min_score),
            opt(d.max_score),
            opt(d.bad_rate),
            opt(d.lift),
            d.cumulative_rows,
            d.cumulative_bads,
            num(d.cumulative_gain),
            opt(d.cumulative_lift)
        );
    }
    let _ = write!(
        h,
        "</table>\n<h2>Bad rate by {} band</h2>\n<p>Bands of column <code>{}</code>.</p>\n<table id=\"bands\">\n\
         <tr><th>From</th><th>To</th><th>Rows</th><th>Share</th><th>Bads</th><th>Bad rate</th></tr>\n",
        r.bands.kind,
        escape(&r.bands.column)
    );
    let last = r.bands.bands.len().saturating_sub(1);
    for (i, b) in r.bands.bands.iter().enumerate() {
        let close = if i == last { "]" } else { ")" };
        let _ = writeln!(
            h,
            "<tr><td>[{}</td><td>{}{close}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            b.lower,
            b.upper,
            b.rows,
            num(b.share),
            b.bads,
            opt(b.bad_rate)
        );
    }
    h.push_str("</table>\n");
    if let Some(p) = &r.psi {
        let _ = write!(
            h,
            "<h2>Population stability</h2>\n<p>PSI {} between {} baseline rows (expected) and {} scored rows (actual), \
             over the baseline's score deciles; an empty share counts as {}.</p>\n<table id=\"psi\">\n\
             <tr><th>Score above</th><th>Score up to</th><th>Baseline share</th><th>Scored share</th><th>Contribution</th></tr>\n",
            num(p.value),
            p.baseline_rows,
            p.rows,
            p.epsilon
        );
        for b in &p.bins {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                b.lower.map_or("−∞".into(), |v| v.to_string()),
                b.upper.map_or("+∞".into(), |v| v.to_string()),
                num(b.expected),
                num(b.actual),
                num(b.contribution)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str(DEFINITIONS);
    h.push_str("</body>\n</html>\n");
    Ok(h)
}

const DEFINITIONS: &str = "<h2>Definitions</h2>\n<ul>\n\
<li>AUC: the chance that a random bad scores higher than a random good, ties counting one half (Mann–Whitney). Gini = 2·AUC − 1.</li>\n\
<li>KS: the largest gap |TPR − FPR| over score thresholds, where TPR (FPR) is the share of bads (goods) scoring at or above the threshold.</li>\n\
<li>Deciles: rows by score, highest first, cut into tenths by position; rows with equal scores stay together in the decile of the first of them, so deciles may be uneven or empty. Lift = the decile's bad rate / the overall bad rate; cumulative gain = the share of all bads in deciles 1 to k.</li>\n\
<li>PSI = Σ (a − e)·ln(a/e) over the baseline's score deciles, a and e the scored and baseline shares. Common reading: below 0.1 stable, 0.1 to 0.25 some shift, above 0.25 a significant shift.</li>\n\
</ul>\n";
