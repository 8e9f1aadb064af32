//! ROC and Recall@K plots as hand-written SVG (text is SVG `<text>`, so no fonts are read) and as
//! PNG rasterised here without any text (axes, grid and lines only; the SVG carries the labels and
//! the legend, and series colours are the same in both).

use crate::metrics::RocCurve;
use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use std::fmt::Write as _;
use std::path::Path;

/// Series colours (Tableau 10), cycled.
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw markers at the points (short series such as Recall@K).
    pub markers: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// The chance diagonal from (x0, y0) to (x1, y1) (ROC).
    pub diagonal: bool,
    pub series: Vec<Series>,
}

/// Area under ROC points by the trapezoid rule (equals the rank-based AUROC for a full curve).
pub fn trapezoid_auc(c: &RocCurve) -> f64 {
    c.fpr.windows(2).zip(c.tpr.windows(2)).map(|(x, y)| (x[1] - x[0]) * (y[0] + y[1]) / 2.0).sum()
}

/// ROC curves, one line per class, "name (AUROC 0.812)" in the legend.
pub fn roc_plot(title: &str, curves: &[(String, RocCurve)]) -> Plot {
    Plot {
        title: title.into(),
        x_label: "false positive rate".into(),
        y_label: "true positive rate".into(),
        x_range: (0.0, 1.0),
        y_range: (0.0, 1.0),
        diagonal: true,
        series: curves
            .iter()
            .map(|(name, c)| Series {
                name: format!("{name} (AUROC {:.3})", trapezoid_auc(c)),
                points: c.fpr.iter().copied().zip(c.tpr.iter().copied()).collect(),
                markers: false,
            })
            .collect(),
    }
}

/// Recall@K for K = 1..=k_max from 0-based ranks.
pub fn recall_curve(ranks: &[usize], k_max: usize) -> Vec<(usize, f64)> {
    (1..=k_max)
        .filter_map(|k| crate::retrieval::recall_at_k_opt(ranks, k).map(|r| (k, r)))
        .collect()
}

/// Recall@K curves (one per direction / model).
pub fn recall_plot(title: &str, series: &[(String, Vec<(usize, f64)>)]) -> Plot {
    let k_max =
        series.iter().flat_map(|(_, p)| p.iter().map(|&(k, _)| k)).max().unwrap_or(1).max(2);
    Plot {
        title: title.into(),
        x_label: "K".into(),
        y_label: "Recall@K".into(),
        x_range: (1.0, k_max as f64),
        y_range: (0.0, 1.0),
        diagonal: false,
        series: series
            .iter()
            .map(|(name, p)| Series {
                name: name.clone(),
                points: p.iter().map(|&(k, r)| (k as f64, r)).collect(),
                markers: p.len() <= 30,
            })
            .collect(),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const W: f64 = 640.0;
const H: f64 = 480.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 52.0;

impl Plot {
    /// Data -> pixel coordinates in a `w x h` canvas with margins `(left, top, right, bottom)`.
    fn map(
        &self,
        (x, y): (f64, f64),
        (w, h): (f64, f64),
        (left, top, right, bottom): (f64, f64, f64, f64),
    ) -> (f64, f64) {
        let (x0, x1) = self.x_range;
        let (y0, y1) = self.y_range;
        let px = left + (x - x0) / (x1 - x0).max(1e-300) * (w - left - right);
        let py = h - bottom - (y - y0) / (y1 - y0).max(1e-300) * (h - top - bottom);
        (px, py)
    }

    fn ticks(range: (f64, f64)) -> Vec<f64> {
        (0..=5).map(|i| range.0 + (range.1 - range.0) * i as f64 / 5.0).collect()
    }

    /// The plot as a standalone SVG document (640 x 480).
    pub fn to_svg(&self) -> String {
        let m = |p| self.map(p, (W, H), (LEFT, TOP, RIGHT, BOTTOM));
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            W / 2.0,
            xml_escape(&self.title)
        );
        for t in Self::ticks(self.x_range) {
            let (x, y) = m((t, self.y_range.0));
            let (_, yt) = m((t, self.y_range.1));
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{yt:.1}" stroke="#e0e0e0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                y + 16.0,
                tick_label(t)
            );
        }
        for t in Self::ticks(self.y_range) {
            let (x, y) = m((self.x_range.0, t));
            let (xr, _) = m((self.x_range.1, t));
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y:.1}" x2="{xr:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                x - 6.0,
                y + 4.0,
                tick_label(t)
            );
        }
        let (ax0, ay0) = m((self.x_range.0, self.y_range.0));
        let (ax1, ay1) = m((self.x_range.1, self.y_range.1));
        let _ = writeln!(
            s,
            r#"<rect x="{ax0:.1}" y="{ay1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
            ax1 - ax0,
            ay0 - ay1
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (ax0 + ax1) / 2.0,
            H - 12.0,
            xml_escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (ay0 + ay1) / 2.0,
            xml_escape(&self.y_label)
        );
        if self.diagonal {
            let _ = writeln!(
                s,
                r##"<line x1="{ax0:.1}" y1="{ay0:.1}" x2="{ax1:.1}" y2="{ay1:.1}" stroke="#999999" stroke-dasharray="4 4"/>"##
            );
        }
        for (i, se) in self.series.iter().enumerate() {
            let (r, g, b) = PALETTE[i % PALETTE.len()];
            let pts: Vec<String> =
                se.points.iter().map(|&p| m(p)).map(|(x, y)| format!("{x:.2},{y:.2}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="rgb({r},{g},{b})" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
            if se.markers {
                for &p in &se.points {
                    let (x, y) = m(p);
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{x:.2}" cy="{y:.2}" r="3" fill="rgb({r},{g},{b})"/>"#
                    );
                }
            }
            // legend, bottom right inside the axes
            let ly = ay0 - 12.0 - 16.0 * (self.series.len() - 1 - i) as f64;
            let lx = ax1 - 230.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="rgb({r},{g},{b})" stroke-width="3"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
                ly - 4.0,
                lx + 20.0,
                ly - 4.0,
                lx + 26.0,
                xml_escape(&se.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// The plot rasterised without text: white background, grid, axes box, dashed diagonal and
    /// 2-pixel series lines in the palette colours.
    pub fn to_png_image(&self, w: u32, h: u32) -> RgbImage {
        let (wf, hf) = (w as f64, h as f64);
        let (l, t, r, b) = (wf * 0.08, hf * 0.05, wf * 0.03, hf * 0.08);
        let m = |p| self.map(p, (wf, hf), (l, t, r, b));
        let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
        for v in Self::ticks(self.x_range) {
            let (x, y0) = m((v, self.y_range.0));
            let (_, y1) = m((v, self.y_range.1));
            line(&mut img, (x, y0), (x, y1), Rgb([224, 224, 224]), 1, None);
        }
        for v in Self::ticks(self.y_range) {
            let (x0, y) = m((self.x_range.0, v));
            let (x1, _) = m((self.x_range.1, v));
            line(&mut img, (x0, y), (x1, y), Rgb([224, 224, 224]), 1, None);
        }
        if self.diagonal {
            line(
                &mut img,
                m((self.x_range.0, self.y_range.0)),
                m((self.x_range.1, self.y_range.1)),
                Rgb([150, 150, 150]),
                1,
                Some(6),
            );
        }
        let corners = [
            (self.x_range.0, self.y_range.0),
            (self.x_range.1, self.y_range.0),
            (self.x_range.1, self.y_range.1),
            (self.x_range.0, self.y_range.1),
        ];
        for i in 0..4 {
            line(&mut img, m(corners[i]), m(corners[(i + 1) % 4]), Rgb([0, 0, 0]), 1, None);
        }
        for (i, se) in self.series.iter().enumerate() {
            let (cr, cg, cb) = PALETTE[i % PALETTE.len()];
            for p in se.points.windows(2) {
                line(&mut img, m(p[0]), m(p[1]), Rgb([cr, cg, cb]), 2, None);
            }
        }
        img
    }

    pub fn write_svg(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_svg())
            .with_context(|| format!("{}: cannot write", path.display()))
    }

    /// Writes the text-free PNG rendering (960 x 720).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        self.to_png_image(960, 720)
            .save(path)
            .with_context(|| format!("{}: cannot write", path.display()))
    }
}

fn tick_label(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A line by stepping along the longer axis, `width` pixels thick, dashed with period `dash`.
fn line(
    img: &mut RgbImage,
    a: (f64, f64),
    b: (f64, f64),
    c: Rgb<u8>,
    width: i64,
    dash: Option<usize>,
) {
    let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for s in 0..=steps {
        if dash.is_some_and(|d| (s / d) % 2 == 1) {
            continue;
        }
        let f = s as f64 / steps as f64;
        let (x, y) =
            ((a.0 + (b.0 - a.0) * f).round() as i64, (a.1 + (b.1 - a.1) * f).round() as i64);
        for dx in 0..width {
            for dy in 0..width {
                let (px, py) = (x + dx - width / 2, y + dy - width / 2);
                if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                    img.put_pixel(px as u32, py as u32, c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{auroc, roc_curve};

    #[test]
    fn roc_svg_and_png() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.5, 0.5];
        let y = [false, false, true, true, true, false];
        let c = roc_curve(&s, &y).unwrap();
        assert!((trapezoid_auc(&c) - auroc(&s, &y).unwrap()).abs() < 1e-12);
        let c2 = roc_curve(&s, &[true, false, false, true, false, true]).unwrap();
        let p = roc_plot("ROC <test> & co", &[("Edema".into(), c), ("Atelectasis".into(), c2)]);
        let svg = p.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Edema (AUROC 0.722)"), "{svg}"); // 6.5/9 (one tied pair)
        assert!(svg.contains("ROC &lt;test&gt; &amp; co"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let img = p.to_png_image(200, 150);
        // both series colours are present; the top-left corner is background
        assert!(img.pixels().any(|px| px.0 == [31, 119, 180]));
        assert!(img.pixels().any(|px| px.0 == [255, 127, 14]));
        assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
        let dir = std::env::temp_dir().join(format!("medvlp-eval-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        p.write_png(&dir.join("roc.png")).unwrap();
        let back = image::open(dir.join("roc.png")).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (960, 720));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn recall_curve_and_plot() {
        let rc = recall_curve(&[0, 1, 5, 20], 10);
        assert_eq!(rc.len(), 10);
        assert_eq!(rc[0], (1, 0.25));
        assert_eq!(rc[5], (6, 0.75));
        let p = recall_plot("retrieval", &[("image_to_text".into(), rc)]);
        assert_eq!(p.x_range, (1.0, 10.0));
        let svg = p.to_svg();
        assert_eq!(svg.matches("<circle").count(), 10);
        assert!(svg.contains(">image_to_text</text>"));
    }
}
