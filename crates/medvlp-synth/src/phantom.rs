//! The frontal chest radiograph phantom.
//!
//! Everything is laid out in normalised coordinates (u to the image's right, v down, 0..1), so
//! features scale with the image size; stroke and blob radii never drop below half a pixel.
//! The renderer builds an attenuation map (air 0, soft tissue ~0.5, bone and metal above), warps
//! it (rotation, zoom, shift), blurs it, maps it to display intensity (exposure, contrast, gamma)
//! and adds detector noise.
//!
//! Laterality: the film is displayed as a PA view, so the patient's RIGHT is the image's LEFT
//! (columns < width / 2) and the heart bulges to the image's right. Image side index 0 is the
//! image's left half (patient right), 1 the image's right half (patient left).

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::findings::{
    Acquisition, Anatomy, AtelectasisKind, Findings, Fracture, LineSite, Lobe, Severity, Side, View,
};

/// Image side (0 = image left = patient right, 1 = image right = patient left) of a patient side.
pub fn image_side(s: Side) -> usize {
    match s {
        Side::Right => 0,
        Side::Left => 1,
        Side::Bilateral => 0,
    }
}

fn sides_of(s: Side) -> &'static [usize] {
    match s {
        Side::Right => &[0],
        Side::Left => &[1],
        Side::Bilateral => &[0, 1],
    }
}

#[inline]
fn smooth01(x: f32) -> f32 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

/// Visible amplitude factor of a finding from its conspicuity.
#[inline]
fn amp(c: f32) -> f32 {
    0.3 + 0.7 * c
}

/// A square float layer with stamping primitives.
struct Layer {
    s: usize,
    d: Vec<f32>,
}

impl Layer {
    fn new(s: usize) -> Layer {
        Layer { s, d: vec![0.0; s * s] }
    }

    /// Soft disc of radius `r` (normalised) at (u, v); `max` blending or additive.
    fn disc(&mut self, u: f32, v: f32, r: f32, val: f32, add: bool) {
        let sf = self.s as f32;
        let (px, py) = (u * sf - 0.5, v * sf - 0.5);
        let rp = (r * sf).max(0.5);
        let reach = rp + 1.0;
        let x0 = (px - reach).floor().max(0.0) as usize;
        let y0 = (py - reach).floor().max(0.0) as usize;
        let x1 = ((px + reach).ceil() as isize).min(self.s as isize - 1);
        let y1 = ((py + reach).ceil() as isize).min(self.s as isize - 1);
        if x1 < 0 || y1 < 0 {
            return;
        }
        for y in y0..=y1 as usize {
            let dy = y as f32 - py;
            let row = &mut self.d[y * self.s..(y + 1) * self.s];
            for (x, cell) in row.iter_mut().enumerate().take(x1 as usize + 1).skip(x0) {
                let dx = x as f32 - px;
                let dist = (dx * dx + dy * dy).sqrt();
                let w = (rp + 0.5 - dist).clamp(0.0, 1.0);
                if w > 0.0 {
                    let val = val * w;
                    if add {
                        *cell += val;
                    } else if val > *cell {
                        *cell = val;
                    }
                }
            }
        }
    }

    /// Max-blended stroke along a segment with linearly varying radius and value.
    fn segment(&mut self, a: (f32, f32), b: (f32, f32), r: (f32, f32), val: (f32, f32)) {
        let sf = self.s as f32;
        let len_px = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt() * sf;
        // Discs closer than half a radius leave edge scallops under 0.1 px.
        let rmin = (r.0.min(r.1) * sf).max(0.5);
        let steps = (len_px / (0.5 * rmin).max(0.6)).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f32 / steps as f32;
            self.disc(
                a.0 + (b.0 - a.0) * t,
                a.1 + (b.1 - a.1) * t,
                r.0 + (r.1 - r.0) * t,
                val.0 + (val.1 - val.0) * t,
                false,
            );
        }
    }

    fn polyline(&mut self, pts: &[(f32, f32)], r: f32, val: f32) {
        for w in pts.windows(2) {
            self.segment(w[0], w[1], (r, r), (val, val));
        }
    }
}

/// A function on 0..=1 tabulated for speed (powf per pixel is a third of the render time).
struct Lut {
    t: [f32; 513],
}

impl Lut {
    fn new(f: impl Fn(f32) -> f32) -> Lut {
        let mut t = [0.0; 513];
        for (i, v) in t.iter_mut().enumerate() {
            *v = f(i as f32 / 512.0);
        }
        Lut { t }
    }
    #[inline]
    fn get(&self, x: f32) -> f32 {
        let p = x.clamp(0.0, 1.0) * 512.0;
        let i = (p as usize).min(511);
        let f = p - i as f32;
        self.t[i] + (self.t[i + 1] - self.t[i]) * f
    }
}

/// Derived geometry of one study.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub cx: f32,
    pub tw: f32,
    pub apex: f32,
    /// Dome height per image side.
    pub dome: [f32; 2],
    /// Costophrenic angle height per image side.
    pub cp: [f32; 2],
    pub heart_c: (f32, f32),
    pub heart_r: (f32, f32),
    pub med_hw: f32,
    pub knob: (f32, f32, f32),
    pub body_hw: f32,
    pub lung_shape: f32,
    /// Mediastinal shift (volume loss pulls toward the collapsed side).
    pub shift: f32,
    pub ctr: f32,
}

impl Geometry {
    pub fn new(an: &Anatomy, acq: &Acquisition, f: &Findings) -> Geometry {
        let mut dome = [
            an.right_dome_v + acq.inspiration_shift,
            an.right_dome_v + an.left_dome_drop + acq.inspiration_shift,
        ];
        let mut shift = 0.0;
        if let Some(a) = &f.atelectasis {
            if a.volume_loss {
                let lift = if a.kind == AtelectasisKind::Lobar { 0.035 } else { 0.022 }
                    * amp(a.conspicuity);
                for &k in sides_of(a.side) {
                    dome[k] -= lift;
                }
                if a.side != Side::Bilateral && a.kind == AtelectasisKind::Lobar {
                    shift = if image_side(a.side) == 0 { -0.015 } else { 0.015 };
                }
            }
        }
        let tw = an.thorax_half_width;
        let ctr = match &f.cardiomegaly {
            Some(c) => c.ctr,
            None => an.normal_ctr,
        } + if acq.view == View::Ap { 0.02 } else { 0.0 };
        let cx = an.cx + shift;
        let wh = ctr * 2.0 * tw;
        let ry = an.heart_height * (1.0 + 1.2 * (ctr - 0.45).max(0.0)) * 1.25;
        Geometry {
            cx,
            tw,
            apex: an.apex_v + acq.inspiration_shift * 0.3,
            cp: [dome[0] + 0.07, dome[1] + 0.07],
            dome,
            heart_c: (cx + 0.14 * wh, an.right_dome_v + acq.inspiration_shift + 0.02),
            heart_r: (wh * 0.5, ry),
            med_hw: an.mediastinum_half_width,
            knob: (cx + an.mediastinum_half_width + 0.01, an.apex_v + 0.17, an.aortic_knob),
            body_hw: tw + an.soft_tissue,
            lung_shape: an.lung_shape,
            shift,
            ctr,
        }
    }

    /// Vertical fraction of `v` between apex (0) and costophrenic angle (1) on image side k.
    #[inline]
    pub fn t(&self, k: usize, v: f32) -> f32 {
        (v - self.apex) / (self.cp[k] - self.apex)
    }

    /// Lateral extent (distance from the midline) of the lung on side k at row v.
    #[inline]
    pub fn lat(&self, k: usize, v: f32) -> f32 {
        let t = self.t(k, v);
        if t <= 0.0 {
            return 0.0;
        }
        let t = t.min(1.0);
        let g = (1.0 - (1.0 - t) * (1.0 - t)).sqrt().powf(self.lung_shape);
        self.tw * (0.15 + 0.85 * g)
    }

    /// Heart extent from the midline on side k at row v (0 when the row misses the heart).
    #[inline]
    pub fn heart_ext(&self, k: usize, v: f32) -> f32 {
        let q = (v - self.heart_c.1) / self.heart_r.1;
        if q.abs() >= 1.0 {
            return 0.0;
        }
        let dx = self.heart_r.0 * (1.0 - q * q).sqrt();
        if k == 0 {
            (self.cx - (self.heart_c.0 - dx)).max(0.0)
        } else {
            (self.heart_c.0 + dx - self.cx).max(0.0)
        }
    }

    /// Medial lung edge (distance from the midline) on side k at row v.
    #[inline]
    pub fn med(&self, k: usize, v: f32) -> f32 {
        let mut m = self.med_hw;
        if k == 1 {
            let d = (v - self.knob.1) / self.knob.2;
            m += self.knob.2 * 0.9 * (-d * d).exp();
        }
        // The upper lobes reach toward the midline above the mediastinum's widest point.
        let t = self.t(k, v).clamp(0.0, 1.0);
        m *= 0.7 + 0.3 * smooth01(t * 3.0);
        m.max(self.heart_ext(k, v))
    }

    /// Diaphragm height at lateral distance `d` on side k.
    #[inline]
    pub fn diaphragm(&self, k: usize, d: f32) -> f32 {
        let r = (d - 0.45 * self.tw) / (0.55 * self.tw);
        if r > 0.0 {
            self.dome[k] + (self.cp[k] - self.dome[k]) * r.min(1.3) * r.min(1.3)
        } else {
            self.dome[k] + 0.05 * r * r
        }
    }

    /// Image point of lung-relative coordinates (a: medial 0 .. lateral 1, b: apex 0 .. CP angle 1).
    pub fn lung_point(&self, k: usize, a: f32, b: f32) -> (f32, f32) {
        let v = self.apex + b * (self.cp[k] - self.apex);
        let (m, l) = (self.med(k, v), self.lat(k, v));
        let d = m + a * (l - m).max(0.0);
        let u = if k == 0 { self.cx - d } else { self.cx + d };
        (u, v)
    }

    /// 1 cm in normalised units (inner thorax ~28 cm wide).
    pub fn cm(&self) -> f32 {
        2.0 * self.tw / 28.0
    }
}

/// Renders one study as display intensities in 0..1, row-major, `size` x `size`.
/// `rng` drives only the stochastic texture (vessel tree jitter comes from the anatomy seed).
///
/// Stages: the pixel pass (body, lungs, analytic findings: `base_pass`), the vessel tree, the
/// drawn layers (opacities, lesions, bones, metal), their composition, then the acquisition
/// (`acquire`: warp, blur, display mapping, noise).
pub fn render(
    an: &Anatomy,
    acq: &Acquisition,
    f: &Findings,
    size: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let s = size;
    let g = Geometry::new(an, acq, f);
    let mut base = base_pass(&g, PixelFindings::new(&g, f), s);
    let ves = vessels(&g, an, f, s);

    // Opacities (masked by lung air), lesions (masked by the lung outline only), bones, metal.
    let mut opa = Layer::new(s);
    let mut les = Layer::new(s);
    let mut bone = Layer::new(s);
    let mut bone2 = Layer::new(s);
    let mut metal = Layer::new(s);
    consolidation(&mut opa, &g, f);
    plate_atelectasis(&mut opa, &g, f);
    edema_lines(&mut opa, &g, an, f);
    lesions(&mut les, &mut metal, &g, f);
    skeleton(&mut bone, &mut bone2, &g, an, acq, f);
    devices(&mut metal, &g, f);

    // ---- compose
    let BaseMaps { att, air, vmask, lung } = &mut base;
    for i in 0..s * s {
        let a_air = air[i];
        let o = opa.d[i].min(0.37) * a_air.min(1.0) + les.d[i] * lung[i];
        att[i] += ves.d[i] * vmask[i] + o + bone.d[i] + bone2.d[i] + metal.d[i];
    }
    acquire(&base.att, s, acq, rng)
}

/// What the findings change in the pixel pass, per image side.
struct PixelFindings {
    /// Pleural effusion: fluid level (NaN without fluid) and amplitude.
    fluid_lvl: [f32; 2],
    fluid_amp: [f32; 2],
    /// Pneumothorax: rim width and amplitude.
    ptx_rim: [f32; 2],
    ptx_amp: [f32; 2],
    /// Lobar collapse: (upper lobe, amplitude).
    wedge: [Option<(bool, f32)>; 2],
    /// Pulmonary oedema haze amplitude (both sides).
    edema_amp: f32,
}

impl PixelFindings {
    fn new(g: &Geometry, f: &Findings) -> PixelFindings {
        let mut fluid_lvl = [f32::NAN; 2];
        let mut fluid_amp = [0.0f32; 2];
        if let Some(e) = &f.effusion {
            for &k in sides_of(e.side) {
                fluid_lvl[k] = g.cp[k] - e.level * (g.cp[k] - g.apex);
                fluid_amp[k] = amp(e.conspicuity).max(0.55);
            }
        }
        let mut ptx_rim = [0.0f32; 2];
        let mut ptx_amp = [0.0f32; 2];
        if let Some(p) = &f.pneumothorax {
            let k = image_side(p.side);
            ptx_rim[k] = p.rim;
            ptx_amp[k] = amp(p.conspicuity);
        }
        let mut wedge = [None::<(bool, f32)>; 2];
        if let Some(a) = &f.atelectasis {
            if let (AtelectasisKind::Lobar, Some(lobe)) = (a.kind, a.lobe) {
                let upper = matches!(lobe, Lobe::RightUpper | Lobe::LeftUpper);
                wedge[image_side(lobe.side())] = Some((upper, amp(a.conspicuity)));
            }
        }
        let edema_amp = f
            .edema
            .as_ref()
            .map(|e| [0.1, 0.16, 0.24][e.severity.index()] * amp(e.conspicuity))
            .unwrap_or(0.0);

        PixelFindings { fluid_lvl, fluid_amp, ptx_rim, ptx_amp, wedge, edema_amp }
    }
}

/// The pixel pass's maps.
struct BaseMaps {
    /// Attenuation (air 0, soft tissue ~0.5, bone and metal above).
    att: Vec<f32>,
    /// Effective lung-air fraction (for masking layers).
    air: Vec<f32>,
    /// Vessel visibility.
    vmask: Vec<f32>,
    /// Geometric lung mask (lesions show through fluid).
    lung: Vec<f32>,
}

/// What the pixel pass knows of one row (v).
struct Row {
    v: f32,
    /// Body half-width.
    bw: f32,
    /// Lateral and medial lung edges and vertical lung fraction, per image side.
    lat: [f32; 2],
    med: [f32; 2],
    tt: [f32; 2],
}

/// The pixel pass: constants shared by every pixel.
struct BasePass<'a> {
    g: &'a Geometry,
    pf: PixelFindings,
    sf: f32,
    /// Edge softness (normalised).
    e: f32,
    /// Soft tissue ~ chord length through an elliptic body, as a function of (d / half-width)^2.
    body_lut: Lut,
    spine_hw: f32,
    /// Vertebra height.
    vert: f32,
}

/// The pixel pass: body, lungs (air), mediastinum, spine, trachea, analytic findings (effusion,
/// lobar collapse, oedema haze, pneumothorax).
fn base_pass(g: &Geometry, pf: PixelFindings, s: usize) -> BaseMaps {
    let sf = s as f32;
    let px = 1.0 / sf;
    let bp = BasePass {
        g,
        pf,
        sf,
        e: 1.2 * px,
        body_lut: Lut::new(|q2| 0.5 * (1.0 - q2).powf(0.3)),
        spine_hw: 0.028 + 0.1 * (g.tw - 0.34),
        vert: (g.cp[0] - g.apex) / 9.0,
    };
    let mut m = BaseMaps {
        att: vec![0.0f32; s * s],
        air: vec![0.0f32; s * s],
        vmask: vec![0.0f32; s * s],
        lung: vec![0.0f32; s * s],
    };
    for y in 0..s {
        let r = bp.row((y as f32 + 0.5) * px);
        let row = y * s;
        for x in 0..s {
            let u = (x as f32 + 0.5) * px;
            let dx = u - g.cx;
            let d = dx.abs();
            let k = (dx > 0.0) as usize;
            let mut a = bp.body(&r, u, d);
            if let Some((air_f, lung_m, vis)) = bp.lung(&r, k, d, &mut a) {
                m.air[row + x] = air_f;
                m.lung[row + x] = lung_m;
                m.vmask[row + x] = vis;
            }
            m.att[row + x] = a;
        }
    }
    m
}

impl BasePass<'_> {
    #[inline]
    fn row(&self, v: f32) -> Row {
        let g = self.g;
        // Body half-width: neck, shoulders, chest, slightly narrower abdomen.
        let bw = {
            let shoulders =
                g.body_hw + 0.05 * smooth01((0.3 - v) / 0.15) * smooth01((v - 0.04) / 0.06);
            let neck = 0.11;
            let w = neck + (shoulders - neck) * smooth01((v - 0.02) / 0.08);
            w * (1.0 - 0.12 * (v - 0.8).max(0.0))
        };
        let lat = [g.lat(0, v), g.lat(1, v)];
        let med = [g.med(0, v), g.med(1, v)];
        let tt = [g.t(0, v), g.t(1, v)];
        Row { v, bw, lat, med, tt }
    }

    /// Body, spine, trachea and gastric bubble at (u, v), `d` from the midline.
    #[inline]
    fn body(&self, r: &Row, u: f32, d: f32) -> f32 {
        let (g, v, bw) = (self.g, r.v, r.bw);
        let (spine_hw, vert) = (self.spine_hw, self.vert);
        let fluid_lvl = &self.pf.fluid_lvl;
        // Soft tissue ~ chord length through an elliptic body.
        let q = d / bw;
        let mut a = if q < 1.0 { self.body_lut.get(q * q) } else { 0.0 };
        // Spine (through the mediastinum), with faint vertebral end plates.
        if d < spine_hw * 1.4 && v > 0.05 {
            let sp = smooth01((spine_hw * 1.4 - d) / (0.4 * spine_hw));
            let plate = 1.0 - 0.35 * (((v - g.apex) / vert * std::f32::consts::PI).sin().powi(8));
            a += 0.1 * sp * plate;
        }
        // Trachea (air column) down to the carina.
        let carina = g.apex + 0.25;
        if v < carina && v > 0.02 && d < 0.03 {
            a -= 0.1 * smooth01((0.03 - d) / 0.01) * smooth01((carina - v) / 0.02);
        }
        // Gastric bubble under the left hemidiaphragm (image right).
        {
            let (gu, gv) = (g.cx + 0.16, g.dome[1] + 0.05);
            let r2 = ((u - gu) / 0.05).powi(2) + ((v - gv) / 0.025).powi(2);
            if r2 < 1.0 && fluid_lvl[1].is_nan() {
                a -= 0.18 * (1.0 - r2);
            }
        }
        a
    }

    /// The lung at `d` from the midline on image side `k`: adds the analytic findings to the
    /// attenuation `a` and returns (air fraction, lung mask, vessel visibility) inside the lung.
    #[inline]
    fn lung(&self, r: &Row, k: usize, d: f32, a: &mut f32) -> Option<(f32, f32, f32)> {
        let (g, v, e, sf) = (self.g, r.v, self.e, self.sf);
        let (lat, med) = (&r.lat, &r.med);
        let PixelFindings { fluid_lvl, fluid_amp, ptx_rim, ptx_amp, wedge, edema_amp } = &self.pf;
        let edema_amp = *edema_amp;
        let t = r.tt[k];
        if t > 0.0 && t < 1.1 && d > med[k] - e && d < lat[k] + e {
            let dia = g.diaphragm(k, d);
            let m = smooth01((d - med[k]) / e + 0.5)
                * smooth01((lat[k] - d) / e + 0.5)
                * smooth01((dia - v) / e + 0.5);
            if m > 0.0 {
                let span = (lat[k] - med[k]).max(1e-3);
                let la = ((d - med[k]) / span).clamp(0.0, 1.0);
                let mut air_f = m;
                let mut vis = m;
                // Lungs are a little denser at the bases and apices (overlying soft tissue).
                let lung_air = 0.37 * (1.0 - 0.15 * (2.0 * t.min(1.0) - 1.0).powi(4));
                // Pleural effusion: fluid from the base up, meniscus climbing the chest wall.
                if !fluid_lvl[k].is_nan() {
                    let surf = fluid_lvl[k]
                        - (0.03 + 0.05 * (g.cp[k] - fluid_lvl[k]) / (g.cp[k] - g.apex)) * la * la;
                    let fl = smooth01((v - surf) / 0.015 + 0.3);
                    air_f *= 1.0 - fl * fluid_amp[k];
                    vis *= 1.0 - fl;
                }
                // Lobar collapse: dense wedge.
                if let Some((upper, wa)) = wedge[k] {
                    let inside = if upper {
                        let bb = t / 0.42;
                        bb < 1.0 && la < 0.75 * (1.0 - bb)
                    } else {
                        let bb = (t - 0.45) / 0.55;
                        bb > 0.0 && la < 0.55 * bb
                    };
                    if inside {
                        air_f *= 1.0 - 0.8 * wa;
                        vis *= 0.4;
                    }
                }
                // Pulmonary oedema: bilateral perihilar haze.
                if edema_amp > 0.0 {
                    let h =
                        (-((la - 0.05) * (la - 0.05) / 0.2 + (t - 0.5) * (t - 0.5) / 0.09)).exp();
                    *a += edema_amp * h * m;
                }
                // Pneumothorax: a rim of air without markings, a fine visceral pleural line.
                if ptx_rim[k] > 0.0 {
                    let w = ptx_rim[k] * span * (1.0 + 0.6 * (1.0 - t.min(1.0)));
                    let edge = lat[k] - w;
                    let top = g.apex + ptx_rim[k] * 0.45 * (g.cp[k] - g.apex);
                    let inside_lung = d < edge && v > top;
                    if !inside_lung {
                        vis = 0.0;
                        air_f *= 1.0 + 0.12 * ptx_amp[k];
                    } else {
                        air_f *= 1.0 - 0.08 * ptx_rim[k];
                    }
                    let dist =
                        (d - edge).abs().min(if d < edge { (v - top).abs() } else { f32::MAX });
                    let line = (-(dist * sf / 0.9).powi(2)).exp();
                    *a += 0.12 * ptx_amp[k] * line * m;
                }
                *a -= lung_air * air_f;
                let vis = vis.max(0.0) * (1.0 - 0.6 * smooth01((la - 0.6) / 0.4));
                return Some((air_f.max(0.0), m, vis));
            }
        }
        None
    }
}

/// Vessels: a branching tree from each hilum, tapering to the periphery (drawn from the
/// anatomy's vessel seed).
fn vessels(g: &Geometry, an: &Anatomy, f: &Findings, s: usize) -> Layer {
    let sf = s as f32;
    let mut ves = Layer::new(s);
    let mut vrng = ChaCha8Rng::seed_from_u64(an.vessel_seed);
    let (cong_w, cong_a) = match &f.edema {
        Some(e) if e.vascular_congestion => (1.2, 1.0 + 0.3 * amp(e.conspicuity)),
        _ => (1.0, 1.0),
    };
    for k in 0..2 {
        let sign = if k == 0 { -1.0 } else { 1.0 };
        let hv = g.apex + 0.42 * (g.cp[k] - g.apex);
        let hu = g.cx + sign * (g.med(k, hv) + 0.01);
        // Hilar shadow.
        ves.disc(hu + sign * 0.012, hv, 0.03, 0.07, true);
        let n_main = 7;
        for i in 0..n_main {
            let base =
                -1.35 + 2.3 * (i as f32 + 0.5) / n_main as f32 + vrng.random_range(-0.12..0.12);
            // Angle from the horizontal, pointing laterally; negative = upward.
            let upper = base < -0.3;
            let ca = if upper { cong_a * 1.15 } else { cong_a };
            branch(
                &mut ves,
                &mut vrng,
                (hu, hv),
                sign,
                base,
                0.13,
                0.008 * cong_w,
                0.12 * ca,
                0,
                sf,
            );
        }
    }
    ves
}

/// Consolidation: clustered blobs in the lobe, optional air bronchograms.
fn consolidation(opa: &mut Layer, g: &Geometry, f: &Findings) {
    let s = opa.s;
    if let Some(c) = &f.consolidation {
        let mut r2 = ChaCha8Rng::seed_from_u64(c.shape_seed);
        let k = image_side(c.lobe.side());
        let (a0, b0) = c.lobe.centre();
        // Consolidation under pleural fluid would be invisible: keep its centre above the fluid.
        let fl =
            f.effusion.as_ref().filter(|e| sides_of(e.side).contains(&k)).map_or(0.0, |e| e.level);
        let b0 = b0.min(0.9 - fl);
        let a0 = if matches!(c.lobe, Lobe::RightMiddle | Lobe::Lingula) { 0.12 } else { a0 };
        let rad = [0.06, 0.085, 0.115][c.extent.index()];
        let am = amp(c.conspicuity) * 0.4;
        let n = 14 + 8 * c.extent.index();
        let spread = [0.22, 0.3, 0.38][c.extent.index()];
        let mut blob = Layer::new(s);
        for _ in 0..n {
            let (u, v) = g.lung_point(
                k,
                (a0 + r2.random_range(-spread..spread)).clamp(0.0, 1.0),
                (b0 + r2.random_range(-spread..spread) * 0.5).clamp(0.05, 0.98),
            );
            blob.disc(u, v, rad * r2.random_range(0.3..0.65), am * 0.4, true);
        }
        if c.air_bronchograms {
            let (u, v) = g.lung_point(k, a0, b0);
            let sign = if k == 0 { -1.0 } else { 1.0 };
            let mut br = Layer::new(s);
            for j in 0..3 {
                let ang: f32 = -0.6 + 0.6 * j as f32 + r2.random_range(-0.2..0.2);
                let l = rad * 0.9;
                let (eu, ev) = (u + sign * l * ang.cos(), v + l * ang.sin());
                br.segment((u - sign * rad * 0.3, v), (eu, ev), (0.005, 0.003), (1.0, 1.0));
            }
            for i in 0..s * s {
                blob.d[i] -= 0.35 * blob.d[i].min(am) * br.d[i];
            }
        }
        for i in 0..s * s {
            opa.d[i] += blob.d[i].min(am);
        }
    }
}

/// Plate-like atelectasis: thin bands at the base(s).
fn plate_atelectasis(opa: &mut Layer, g: &Geometry, f: &Findings) {
    if let Some(a) = &f.atelectasis {
        if a.kind == AtelectasisKind::PlateLike {
            let mut r2 = ChaCha8Rng::seed_from_u64(a.shape_seed);
            for &k in sides_of(a.side) {
                let n = r2.random_range(2..=3);
                // Above any fluid on that side.
                let fl = f
                    .effusion
                    .as_ref()
                    .filter(|e| sides_of(e.side).contains(&k))
                    .map_or(0.0, |e| e.level);
                let b_hi = (1.0 - fl - 0.06).min(0.85);
                for _ in 0..n {
                    let b = r2.random_range(b_hi - 0.17..b_hi);
                    let a0 = r2.random_range(0.15..0.35);
                    let a1 = a0 + r2.random_range(0.35..0.55);
                    let p0 = g.lung_point(k, a0, b);
                    let p1 = g.lung_point(k, a1.min(0.95), b + r2.random_range(-0.05..0.03));
                    opa.segment(
                        p0,
                        p1,
                        (0.01, 0.013),
                        (0.34 * amp(a.conspicuity), 0.34 * amp(a.conspicuity)),
                    );
                }
            }
        }
    }
}

/// Edema: Kerley B lines at the lateral bases; patchy airspace opacity when severe.
fn edema_lines(opa: &mut Layer, g: &Geometry, an: &Anatomy, f: &Findings) {
    if let Some(ed) = &f.edema {
        if ed.kerley_lines {
            for k in 0..2 {
                let sign = if k == 0 { -1.0 } else { 1.0 };
                for j in 0..5 {
                    let b = 0.7 + 0.05 * j as f32;
                    let (u, v) = g.lung_point(k, 0.97, b);
                    let l = 0.025;
                    opa.segment(
                        (u - sign * l, v),
                        (u, v),
                        (0.0025, 0.0025),
                        (0.14 * amp(ed.conspicuity), 0.14 * amp(ed.conspicuity)),
                    );
                }
            }
        }
        if ed.severity == Severity::Severe {
            // Alveolar component: patchy perihilar airspace opacity.
            let mut r2 = ChaCha8Rng::seed_from_u64(an.vessel_seed ^ 0x5eed);
            for k in 0..2 {
                for _ in 0..6 {
                    let (u, v) =
                        g.lung_point(k, r2.random_range(0.05..0.5), r2.random_range(0.3..0.75));
                    opa.disc(u, v, 0.04, 0.06 * amp(ed.conspicuity), true);
                }
            }
        }
    }
}

/// Nodule, mass (lobulated), calcified granuloma (drawn as metal: as dense as calcium).
fn lesions(les: &mut Layer, metal: &mut Layer, g: &Geometry, f: &Findings) {
    let px = 1.0 / les.s as f32;
    let lesion_at = |l: &crate::findings::Lesion| {
        let k = image_side(l.lobe.side());
        g.lung_point(k, l.pos.0, l.pos.1)
    };
    if let Some(n) = &f.nodule {
        let (u, v) = lesion_at(n);
        les.disc(u, v, 0.5 * n.size_cm * g.cm(), 0.3 * amp(n.conspicuity), false);
    }
    if let Some(m) = &f.mass {
        let (u, v) = lesion_at(m);
        let mut r2 = ChaCha8Rng::seed_from_u64(m.shape_seed);
        let r = 0.5 * m.size_cm * g.cm();
        les.disc(u, v, r * 0.85, 0.3 * amp(m.conspicuity), false);
        for _ in 0..3 {
            let ang: f32 = r2.random_range(0.0..std::f32::consts::TAU);
            les.disc(
                u + 0.4 * r * ang.cos(),
                v + 0.4 * r * ang.sin(),
                r * 0.6,
                0.3 * amp(m.conspicuity),
                false,
            );
        }
    }
    if let Some(gr) = &f.granuloma {
        let (u, v) = lesion_at(gr);
        metal.disc(
            u,
            v,
            (0.5 * gr.size_cm * g.cm()).max(0.9 * px),
            0.6 * amp(gr.conspicuity),
            false,
        );
    }
}

/// Ribs (posterior arcs from the spine, fainter anterior arcs running down and medially, with
/// the fracture), clavicles and, on AP films, the scapulae.
fn skeleton(
    bone: &mut Layer,
    bone2: &mut Layer,
    g: &Geometry,
    an: &Anatomy,
    acq: &Acquisition,
    f: &Findings,
) {
    let sp = (g.dome[0] - g.apex + 0.05) / 8.0 * (1.0 + an.rib_spacing_jitter);
    let fx = f.fracture.as_ref();
    for k in 0..2 {
        for i in 0..10 {
            rib(bone, bone2, g, k, i, sp, fx);
        }
        shoulder(bone2, g, acq, k);
    }
}

/// Rib `i` (0 = highest) on image side `k`, `sp` apart; broken if `fx` says so.
fn rib(
    bone: &mut Layer,
    bone2: &mut Layer,
    g: &Geometry,
    k: usize,
    i: usize,
    sp: f32,
    fx: Option<&Fracture>,
) {
    let px = 1.0 / bone.s as f32;
    let sign = if k == 0 { -1.0 } else { 1.0 };
    let v0 = g.apex - 0.05 + i as f32 * sp;
    let rw = 0.2 * sp;
    let mut pts = Vec::with_capacity(14);
    for j in 0..=12 {
        let qq = j as f32 / 12.0;
        let d = 0.02 + qq * (g.tw + 0.015);
        pts.push((g.cx + sign * d, v0 + sp * (-0.45 * qq + 2.5 * qq * qq)));
    }
    let broken = fx.filter(|f| {
        image_side(f.side) == k && (f.rib as usize..(f.rib + f.count) as usize).contains(&(i + 1))
    });
    match broken {
        None => bone.polyline(&pts, rw, 0.07),
        Some(fr) => {
            // Break at ~70 % of the arc; a gap, an optional step, an optional callus.
            let c = amp(fr.conspicuity);
            let cut = 8;
            let step = if fr.displaced { rw * 2.5 * c } else { 0.0 };
            let gap = (0.02 * c).max(2.0 * px);
            let (bu, bv) = pts[cut];
            let mut a: Vec<(f32, f32)> = pts[..=cut].to_vec();
            a.last_mut().unwrap().0 -= sign * gap * 0.5;
            let mut b: Vec<(f32, f32)> = pts[cut..].iter().map(|p| (p.0, p.1 + step)).collect();
            b[0].0 += sign * gap * 0.5;
            bone.polyline(&a, rw, 0.07);
            bone.polyline(&b, rw, 0.07);
            if !fr.healing {
                // Acute: extrapleural haematoma, a lenticular density along the chest wall.
                let (hu, hv) = pts[10];
                bone2.disc(hu - sign * 0.014, hv, 0.035, 0.15 * c, false);
                bone2.disc(hu - sign * 0.012, hv + 0.035, 0.03, 0.13 * c, false);
            }
            if fr.healing {
                bone2.disc(bu, bv + step * 0.5, rw * 3.2, 0.2 * c, false);
            }
        }
    }
    if (1..8).contains(&i) {
        let yl = v0 + 1.3 * sp;
        let mut ap = Vec::with_capacity(8);
        for j in 0..=7 {
            let qq = 1.0 - 0.62 * j as f32 / 7.0;
            ap.push((g.cx + sign * qq * (g.tw + 0.01), yl + (1.0 - qq) * 2.2 * sp));
        }
        bone2.polyline(&ap, 0.16 * sp, 0.05);
    }
}

/// Clavicle (flatter and higher on AP films) and, on AP films, the scapula on image side `k`.
fn shoulder(bone2: &mut Layer, g: &Geometry, acq: &Acquisition, k: usize) {
    let s = bone2.s;
    let sign = if k == 0 { -1.0 } else { 1.0 };
    // Clavicle (flatter and higher on AP films).
    let (med_v, lat_v) = if acq.view == View::Ap {
        (g.apex + 0.04, g.apex - 0.02)
    } else {
        (g.apex + 0.06, g.apex - 0.04)
    };
    let mut cl = Vec::with_capacity(10);
    for j in 0..=9 {
        let qq = j as f32 / 9.0;
        let d = 0.035 + qq * (g.tw * 0.78);
        cl.push((
            g.cx + sign * d,
            med_v + (lat_v - med_v) * qq + 0.012 * (qq * std::f32::consts::TAU).sin(),
        ));
    }
    bone2.polyline(&cl, 0.011, 0.14);
    // Scapula overlapping the upper lung on AP films.
    if acq.view == View::Ap {
        let (u, v) = (g.cx + sign * (g.tw * 0.95), g.apex + 0.16);
        let mut sc = Layer::new(s);
        sc.disc(u, v, 0.09, 0.045, false);
        for i in 0..s * s {
            bone2.d[i] += sc.d[i];
        }
    }
}

/// Support devices (metal): ET tube, central line, pacemaker with its leads.
fn devices(metal: &mut Layer, g: &Geometry, f: &Findings) {
    let carina_v = g.apex + 0.25;
    if let Some(et) = &f.devices.et_tube {
        let tip = carina_v - et.tip_cm * g.cm();
        metal.segment((g.cx + 0.004, 0.0), (g.cx, tip), (0.009, 0.009), (0.22, 0.22));
        metal.segment((g.cx + 0.004, 0.0), (g.cx, tip), (0.0025, 0.0025), (0.7, 0.7));
    }
    if let Some(cl) = &f.devices.central_line {
        let k = image_side(cl.side);
        let sign = if k == 0 { -1.0 } else { 1.0 };
        let svc = (g.cx - g.med_hw * 0.6, carina_v + 0.05);
        let pts: Vec<(f32, f32)> = match cl.site {
            LineSite::InternalJugular => {
                vec![
                    (g.cx + sign * 0.07, 0.0),
                    (g.cx + sign * 0.06, g.apex),
                    (g.cx + sign * 0.035, g.apex + 0.08),
                    svc,
                ]
            }
            LineSite::Subclavian => vec![
                (g.cx + sign * g.tw * 0.8, g.apex + 0.02),
                (g.cx + sign * g.tw * 0.4, g.apex + 0.05),
                (g.cx + sign * 0.04, g.apex + 0.09),
                svc,
            ],
        };
        metal.polyline(&pts, 0.003, 0.6);
    }
    if let Some(pm) = &f.devices.pacemaker {
        let k = image_side(pm.side);
        let sign = if k == 0 { -1.0 } else { 1.0 };
        let (gu, gv) = (g.cx + sign * g.tw * 0.62, g.apex + 0.12);
        for dy in [-0.012f32, 0.0, 0.012] {
            metal.segment((gu - 0.028, gv + dy), (gu + 0.028, gv + dy), (0.014, 0.014), (0.9, 0.9));
        }
        let ra = (g.cx - g.med_hw * 0.8, g.heart_c.1 - g.heart_r.1 * 0.55);
        let rv = (g.heart_c.0 - g.heart_r.0 * 0.1, g.heart_c.1 - 0.02);
        let mid = (g.cx + sign * 0.05, g.apex + 0.1);
        metal.polyline(&[(gu, gv), mid, (g.cx - 0.02, carina_v + 0.04), ra], 0.003, 0.75);
        if pm.leads > 1 {
            metal.polyline(&[(gu, gv), mid, (g.cx - 0.01, carina_v + 0.05), rv], 0.003, 0.75);
        }
    }
}

/// The acquisition: warp (rotation, zoom, shift), blur, display mapping (exposure, contrast,
/// gamma) and detector noise (drawn from `rng`).
fn acquire(att: &[f32], s: usize, acq: &Acquisition, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let sf = s as f32;
    let out = warp(att, s, acq.rotation_deg.to_radians(), acq.zoom, acq.shift);
    let out = blur(out, s, acq.blur * sf / 224.0);
    let mut img = out;
    let noise = acq.noise;
    let gamma_lut = Lut::new(|x| x.powf(acq.gamma));
    let mut buf = [0u32; 64];
    let mut bi = 64;
    let mut take = |rng: &mut ChaCha8Rng| {
        if bi == 64 {
            for b in buf.iter_mut() {
                *b = rng.next_u32();
            }
            bi = 0;
        }
        bi += 1;
        buf[bi - 1]
    };
    for p in img.iter_mut() {
        let x = gamma_lut.get((acq.exposure + 0.06 + acq.contrast * 1.4 * *p).clamp(0.0, 1.0));
        let r = take(rng);
        // Irwin-Hall(3) of 10-bit uniforms, scaled to unit variance.
        let n = ((r & 1023) + ((r >> 10) & 1023) + ((r >> 20) & 1023)) as f32 / 1023.0 - 1.5;
        *p = (x + noise * 2.0 * n).clamp(0.0, 1.0);
    }
    img
}

#[allow(clippy::too_many_arguments)]
fn branch(
    l: &mut Layer,
    rng: &mut ChaCha8Rng,
    p: (f32, f32),
    sign: f32,
    ang: f32,
    len: f32,
    w: f32,
    val: f32,
    depth: u32,
    sf: f32,
) {
    let seg = len * rng.random_range(0.75..1.1);
    let a = ang + rng.random_range(-0.12..0.12);
    let e = (p.0 + sign * seg * a.cos(), p.1 + seg * a.sin());
    let w1 = (w * 0.72).max(0.4 / sf);
    l.segment(p, e, (w.max(0.4 / sf), w1), (val, val * 0.75));
    if depth < 3 {
        let spread = rng.random_range(0.25..0.5);
        branch(l, rng, e, sign, a - spread, len * 0.7, w1, val * 0.72, depth + 1, sf);
        branch(l, rng, e, sign, a + spread, len * 0.7, w1, val * 0.72, depth + 1, sf);
    }
}

/// Bilinear resample under rotation about the centre, zoom and shift (normalised units).
fn warp(src: &[f32], s: usize, rot: f32, zoom: f32, shift: (f32, f32)) -> Vec<f32> {
    let sf = s as f32;
    let (sn, cs) = rot.sin_cos();
    let c = sf * 0.5;
    let mut out = vec![0.0f32; s * s];
    let inv = 1.0 / zoom;
    for y in 0..s {
        let dy = y as f32 + 0.5 - c - shift.1 * sf;
        for x in 0..s {
            let dx = x as f32 + 0.5 - c - shift.0 * sf;
            let sx = (cs * dx + sn * dy) * inv + c - 0.5;
            let sy = (-sn * dx + cs * dy) * inv + c - 0.5;
            if sx < 0.0 || sy < 0.0 || sx > sf - 1.0 || sy > sf - 1.0 {
                continue;
            }
            let (x0, y0) = (sx as usize, sy as usize);
            let (x1, y1) = ((x0 + 1).min(s - 1), (y0 + 1).min(s - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let a = src[y0 * s + x0] * (1.0 - fx) + src[y0 * s + x1] * fx;
            let b = src[y1 * s + x0] * (1.0 - fx) + src[y1 * s + x1] * fx;
            out[y * s + x] = a * (1.0 - fy) + b * fy;
        }
    }
    out
}

/// Separable [w, 1-2w, w] passes approximating a Gaussian of `radius` pixels.
fn blur(mut img: Vec<f32>, s: usize, radius: f32) -> Vec<f32> {
    if radius < 0.2 {
        return img;
    }
    let passes = radius.ceil() as usize;
    let w = (radius / passes as f32 * 0.3).min(0.3);
    let mut tmp = vec![0.0f32; s * s];
    for _ in 0..passes {
        for y in 0..s {
            let r = &img[y * s..(y + 1) * s];
            let o = &mut tmp[y * s..(y + 1) * s];
            for x in 0..s {
                let l = r[x.saturating_sub(1)];
                let rr = r[(x + 1).min(s - 1)];
                o[x] = w * (l + rr) + (1.0 - 2.0 * w) * r[x];
            }
        }
        for y in 0..s {
            let (ya, yb) = (y.saturating_sub(1), (y + 1).min(s - 1));
            for x in 0..s {
                img[y * s + x] =
                    w * (tmp[ya * s + x] + tmp[yb * s + x]) + (1.0 - 2.0 * w) * tmp[y * s + x];
            }
        }
    }
    img
}

/// Mean display intensity in a box given in normalised coordinates (tests, previews).
pub fn region_mean(img: &[f32], s: usize, u0: f32, u1: f32, v0: f32, v1: f32) -> f32 {
    let (x0, x1) = ((u0 * s as f32) as usize, ((u1 * s as f32) as usize).min(s));
    let (y0, y1) = ((v0 * s as f32) as usize, ((v1 * s as f32) as usize).min(s));
    let mut sum = 0.0;
    let mut n = 0usize;
    for y in y0..y1 {
        for x in x0..x1 {
            sum += img[y * s + x];
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f32
    }
}
