//! The finding x severity picture grid (`medvlp synth --preview grid.png`): one row per finding,
//! one column per severity, every tile the same reference patient with that single finding at
//! full conspicuity, labelled.
//!
//! Text is drawn with a tiny hand-made 5x7 bitmap font embedded below (uppercase letters,
//! digits and a few signs), so no system fonts or font crates are needed.

use std::path::Path;

use anyhow::{Context as _, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::findings::*;
use crate::phantom::render;

/// 5x7 glyphs, one byte per row, bit 4 = leftmost column. Hand-entered (classic LCD shapes).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        _ => [0; 7],
    }
}

/// Draws `text` at (x, y) with the 5x7 font scaled by `scale`, in gray level `val`.
pub fn draw_text(
    buf: &mut [u8],
    width: usize,
    x: usize,
    y: usize,
    text: &str,
    scale: usize,
    val: u8,
) {
    let height = buf.len() / width;
    for (i, c) in text.chars().enumerate() {
        let g = glyph(c);
        let ox = x + i * 6 * scale;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (px, py) = (ox + col * scale + dx, y + row * scale + dy);
                            if px < width && py < height {
                                buf[py * width + px] = val;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn reference_anatomy() -> Anatomy {
    Anatomy {
        cx: 0.5,
        thorax_half_width: 0.37,
        soft_tissue: 0.05,
        apex_v: 0.13,
        right_dome_v: 0.70,
        left_dome_drop: 0.025,
        normal_ctr: 0.43,
        heart_height: 0.19,
        mediastinum_half_width: 0.065,
        aortic_knob: 0.032,
        rib_spacing_jitter: 0.0,
        lung_shape: 1.0,
        vessel_seed: 7,
    }
}

fn reference_acquisition(view: View) -> Acquisition {
    Acquisition {
        view,
        inspiration_shift: if view == View::Ap { 0.03 } else { 0.0 },
        rotation_deg: 0.0,
        zoom: 1.0,
        shift: (0.0, 0.0),
        exposure: 0.0,
        contrast: 1.0,
        gamma: 1.0,
        noise: 0.008,
        blur: 0.3,
    }
}

fn lesion(lobe: Lobe, size_cm: f32) -> Lesion {
    let (a, b) = lobe.centre();
    Lesion { lobe, pos: (a, b), size_cm, conspicuity: 1.0, shape_seed: 3 }
}

/// One row of the grid: (row label, [(caption, view, findings); 3]).
pub type GridRow = (&'static str, Vec<(String, View, Findings)>);

/// The grid's rows, top to bottom.
pub fn grid_cases() -> Vec<GridRow> {
    vec![
        normal_row(),
        cardiomegaly_row(),
        effusion_row(),
        pneumothorax_row(),
        consolidation_row(),
        atelectasis_row(),
        edema_row(),
        lesions_row(),
        devices_row(),
        fracture_granuloma_row(),
    ]
}

fn normal_row() -> GridRow {
    let none = Findings::default;
    (
        "NORMAL",
        vec![
            ("PA".into(), View::Pa, none()),
            ("AP".into(), View::Ap, none()),
            ("PA (CTR 0.43)".into(), View::Pa, none()),
        ],
    )
}

fn cardiomegaly_row() -> GridRow {
    let none = Findings::default;
    let sev = Severity::ALL;
    (
        "CARDIOMEGALY",
        [0.56f32, 0.61, 0.68]
            .iter()
            .zip(sev)
            .map(|(&ctr, s)| {
                let f = Findings {
                    cardiomegaly: Some(Cardiomegaly { ctr, severity: s, conspicuity: 1.0 }),
                    ..none()
                };
                (format!("CTR {ctr:.2} {}", ["MILD", "MOD.", "SEVERE"][s.index()]), View::Pa, f)
            })
            .collect(),
    )
}

fn effusion_row() -> GridRow {
    let none = Findings::default;
    let sev = Severity::ALL;
    (
        "EFFUSION",
        [0.14f32, 0.35, 0.7]
            .iter()
            .zip(sev)
            .map(|(&level, s)| {
                let f = Findings {
                    effusion: Some(Effusion { side: Side::Left, size: s, level, conspicuity: 1.0 }),
                    ..none()
                };
                (format!("{} LEFT", s.size_word().to_uppercase()), View::Pa, f)
            })
            .collect(),
    )
}

fn pneumothorax_row() -> GridRow {
    let none = Findings::default;
    let sev = Severity::ALL;
    (
        "PNEUMOTHORAX",
        [0.16f32, 0.3, 0.5]
            .iter()
            .zip(sev)
            .map(|(&rim, s)| {
                let f = Findings {
                    pneumothorax: Some(Pneumothorax {
                        side: Side::Right,
                        size: s,
                        rim,
                        conspicuity: 1.0,
                    }),
                    ..none()
                };
                (format!("{} RIGHT", s.size_word().to_uppercase()), View::Pa, f)
            })
            .collect(),
    )
}

fn consolidation_row() -> GridRow {
    let none = Findings::default;
    let sev = Severity::ALL;
    (
        "CONSOLIDATION",
        sev.iter()
            .map(|&s| {
                let f = Findings {
                    consolidation: Some(Consolidation {
                        lobe: Lobe::RightLower,
                        extent: s,
                        air_bronchograms: s == Severity::Severe,
                        pneumonia: true,
                        conspicuity: 1.0,
                        shape_seed: 11,
                    }),
                    ..none()
                };
                (format!("{} RLL", s.word().to_uppercase()), View::Pa, f)
            })
            .collect(),
    )
}

fn atelectasis_row() -> GridRow {
    let none = Findings::default;
    let atel = |kind, side, lobe| Atelectasis {
        kind,
        side,
        lobe,
        volume_loss: true,
        conspicuity: 1.0,
        shape_seed: 5,
    };
    (
        "ATELECTASIS",
        vec![
            (
                "PLATE RIGHT".into(),
                View::Pa,
                Findings {
                    atelectasis: Some(atel(AtelectasisKind::PlateLike, Side::Right, None)),
                    ..none()
                },
            ),
            (
                "BIBASILAR".into(),
                View::Pa,
                Findings {
                    atelectasis: Some(atel(AtelectasisKind::PlateLike, Side::Bilateral, None)),
                    ..none()
                },
            ),
            (
                "LOBAR LLL".into(),
                View::Pa,
                Findings {
                    atelectasis: Some(atel(
                        AtelectasisKind::Lobar,
                        Side::Left,
                        Some(Lobe::LeftLower),
                    )),
                    ..none()
                },
            ),
        ],
    )
}

fn edema_row() -> GridRow {
    let none = Findings::default;
    let sev = Severity::ALL;
    (
        "EDEMA",
        sev.iter()
            .map(|&s| {
                let f = Findings {
                    edema: Some(Edema {
                        severity: s,
                        kerley_lines: s >= Severity::Moderate,
                        vascular_congestion: true,
                        conspicuity: 1.0,
                    }),
                    ..none()
                };
                (s.word().to_uppercase(), View::Pa, f)
            })
            .collect(),
    )
}

fn lesions_row() -> GridRow {
    let none = Findings::default;
    (
        "NODULE / MASS",
        vec![
            (
                "NODULE 1.2CM RUL".into(),
                View::Pa,
                Findings { nodule: Some(lesion(Lobe::RightUpper, 1.2)), ..none() },
            ),
            (
                "NODULE 2.4CM LUL".into(),
                View::Pa,
                Findings { nodule: Some(lesion(Lobe::LeftUpper, 2.4)), ..none() },
            ),
            (
                "MASS 5.5CM RLL".into(),
                View::Pa,
                Findings { mass: Some(lesion(Lobe::RightLower, 5.5)), ..none() },
            ),
        ],
    )
}

fn devices_row() -> GridRow {
    let none = Findings::default;
    (
        "DEVICES",
        vec![
            (
                "ET TUBE".into(),
                View::Ap,
                Findings {
                    devices: Devices {
                        et_tube: Some(EtTube { tip_cm: 4.0 }),
                        ..Default::default()
                    },
                    ..none()
                },
            ),
            (
                "RIGHT IJ LINE".into(),
                View::Ap,
                Findings {
                    devices: Devices {
                        central_line: Some(CentralLine {
                            side: Side::Right,
                            site: LineSite::InternalJugular,
                        }),
                        ..Default::default()
                    },
                    ..none()
                },
            ),
            (
                "PACEMAKER".into(),
                View::Pa,
                Findings {
                    devices: Devices {
                        pacemaker: Some(Pacemaker { side: Side::Left, leads: 2 }),
                        ..Default::default()
                    },
                    ..none()
                },
            ),
        ],
    )
}

fn fracture_granuloma_row() -> GridRow {
    let none = Findings::default;
    let fx = |displaced, healing| Fracture {
        side: Side::Left,
        rib: 7,
        count: if healing { 1 } else { 2 },
        displaced,
        healing,
        conspicuity: 1.0,
    };
    (
        "FRACTURE/GRAN.",
        vec![
            (
                "FX L7-8 DISPL.".into(),
                View::Pa,
                Findings { fracture: Some(fx(true, false)), ..none() },
            ),
            (
                "HEALING FX L7".into(),
                View::Pa,
                Findings { fracture: Some(fx(false, true)), ..none() },
            ),
            (
                "GRANULOMA 5 MM".into(),
                View::Pa,
                Findings { granuloma: Some(lesion(Lobe::LeftUpper, 0.5)), ..none() },
            ),
        ],
    )
}

/// Renders the grid to an 8-bit grayscale PNG with `tile`-pixel tiles.
pub fn write_preview_grid(path: &Path, tile: u32) -> Result<()> {
    anyhow::ensure!((64..=512).contains(&tile), "tile size {tile} out of range (64..=512)");
    let rows = grid_cases();
    let t = tile as usize;
    let scale = 2;
    let label_w = 15 * 6 * scale + 8;
    let cap_h = 7 * scale + 6;
    let header_h = 7 * scale + 10;
    let cols = 3;
    let width = label_w + cols * (t + 4);
    let height = header_h + rows.len() * (t + cap_h + 4);
    let mut buf = vec![16u8; width * height];
    draw_text(
        &mut buf,
        width,
        4,
        4,
        "MEDVLP SYNTH: FINDING X SEVERITY (IMAGE RIGHT = PATIENT LEFT)",
        scale,
        230,
    );
    let an = reference_anatomy();
    for (r, (name, cases)) in rows.iter().enumerate() {
        let y0 = header_h + r * (t + cap_h + 4);
        draw_text(&mut buf, width, 4, y0 + t / 2 - 7, name, scale, 230);
        for (c, (caption, view, f)) in cases.iter().enumerate() {
            let x0 = label_w + c * (t + 4);
            let acq = reference_acquisition(*view);
            let mut rng = ChaCha8Rng::seed_from_u64(1000 + (r * 3 + c) as u64);
            let img = render(&an, &acq, f, t, &mut rng);
            for y in 0..t {
                for x in 0..t {
                    buf[(y0 + y) * width + x0 + x] =
                        (img[y * t + x].clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
                }
            }
            let maxc = t / (6 * scale);
            let cap: String = caption.chars().take(maxc).collect();
            draw_text(&mut buf, width, x0 + 2, y0 + t + 3, &cap, scale, 200);
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    image::save_buffer(path, &buf, width as u32, height as u32, image::ExtendedColorType::L8)
        .with_context(|| format!("cannot write preview grid {}", path.display()))?;
    Ok(())
}
