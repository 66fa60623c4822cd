//! The built-in synthetic domains: procedural street scenes as a labelled source
//! (GTA5 layout) and a target (Cityscapes layout) that differ the way synthetic and
//! real driving data differ.
//!
//! # Scenes
//!
//! A pinhole camera looks down a straight street: the road in perspective at the
//! bottom, sidewalks either side, then a terrain strip or a wider sidewalk, then a
//! street front of building, tree, wall and fence segments at various depths, sky
//! above, a far skyline at the vanishing point. Objects stand on the ground and are
//! drawn far to near: cars (and sometimes a bus or truck) on the road, a cyclist
//! (rider on a bicycle) at the road's edge, persons on the sidewalks, poles carrying
//! a traffic sign or a traffic light at the kerb, trees on the terrain strip. Every
//! image contains road, sidewalk, building, wall, fence, pole, traffic light or sign,
//! vegetation, terrain, sky, person, car, rider and bicycle ([`PROMISED`]).
//!
//! # The domain gap (see docs/synthetic-domains.md)
//!
//! Both domains share one base palette ([`BASE_PALETTE`]), so the gap stays learnable.
//! - Appearance, the main gap: the source is flat and saturated with per-object
//!   colour jitter; the target adds texture (window grids, foliage, clouds, paving,
//!   road wear), sensor noise, blur, a per-image colour cast and lighting gradient,
//!   desaturation, shadows and 8x8 block (compression-like) artefacts, at a per-image
//!   strength drawn from [`Appearance::strength`] (half to full by default).
//! - Geometry: the target camera has a wider field of view and sees objects over a
//!   wider range of distances, so its objects are smaller and spread wider in scale
//!   than the source's (where zoomed-in examples have something to teach).
//!
//! All settings live in [`SynthSettings`] (recorded as `synth.json` beside the
//! output). Every image has its own random generator seeded from the run's seed, the
//! domain, the split and the index, so the output is byte-identical for a seed
//! whatever the number of threads; images are generated in parallel.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::datasets::DatasetKind;
use crate::imageio::{self, ImageError};
use crate::labels::{self, train_id};

/// The train ids the generator paints, named as in the label table.
const ROAD: u8 = train_id("road");
const SIDEWALK: u8 = train_id("sidewalk");
const BUILDING: u8 = train_id("building");
const WALL: u8 = train_id("wall");
const FENCE: u8 = train_id("fence");
const POLE: u8 = train_id("pole");
const TRAFFIC_LIGHT: u8 = train_id("traffic light");
const TRAFFIC_SIGN: u8 = train_id("traffic sign");
const VEGETATION: u8 = train_id("vegetation");
const TERRAIN: u8 = train_id("terrain");
const SKY: u8 = train_id("sky");
const PERSON: u8 = train_id("person");
const RIDER: u8 = train_id("rider");
const CAR: u8 = train_id("car");
const TRUCK: u8 = train_id("truck");
const BUS: u8 = train_id("bus");
const BICYCLE: u8 = train_id("bicycle");

/// Train ids of the classes every generated image contains.
pub const PROMISED: [u8; 15] = [
    ROAD,
    SIDEWALK,
    BUILDING,
    WALL,
    FENCE,
    POLE,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    VEGETATION,
    TERRAIN,
    SKY,
    PERSON,
    RIDER,
    CAR,
    BICYCLE,
];

/// Additional train ids that appear in some images.
pub const OCCASIONAL: [u8; 2] = [TRUCK, BUS];

/// The base colour of each train id, shared by both domains.
pub const BASE_PALETTE: [[u8; 3]; labels::NUM_CLASSES] = [
    [112, 100, 124], // road
    [196, 150, 180], // sidewalk
    [150, 96, 72],   // building
    [176, 172, 132], // wall
    [150, 118, 76],  // fence
    [96, 96, 104],   // pole
    [44, 44, 40],    // traffic light
    [232, 204, 24],  // traffic sign
    [64, 156, 44],   // vegetation
    [160, 200, 84],  // terrain
    [124, 176, 236], // sky
    [208, 56, 84],   // person
    [236, 92, 28],   // rider
    [36, 64, 208],   // car
    [84, 112, 148],  // truck
    [236, 164, 24],  // bus
    [20, 120, 120],  // train (not generated)
    [120, 40, 200],  // motorcycle (not generated)
    [72, 20, 64],    // bicycle
];

/// The camera of a domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Camera {
    /// Focal length as a fraction of the image width (smaller: wider field of view,
    /// smaller objects).
    pub focal: f32,
    /// Height of the camera above the ground, metres.
    pub height_m: f32,
    /// Row of the horizon as a fraction of the image height.
    pub horizon: f32,
    /// Range of distances (metres) objects are placed at.
    pub distance_m: [f32; 2],
}

/// The appearance of a domain; every effect is scaled by a per-image strength drawn
/// uniformly from `strength`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appearance {
    /// Range of the per-image strength multiplying all effects below.
    pub strength: [f32; 2],
    /// Per-object colour jitter (+- per channel, 0..255 scale; not scaled by strength).
    pub jitter: f32,
    /// Texture amplitude (windows, foliage, clouds, paving, road wear), 0..1.
    pub texture: f32,
    /// Standard deviation of the sensor noise, 0..255 scale.
    pub noise: f32,
    /// Blur: blend weight of a 3x3 Gaussian blur, 0..1.
    pub blur: f32,
    /// Magnitude of the per-image colour cast, 0..255 scale.
    pub cast: f32,
    /// Desaturation toward grey, 0..1.
    pub desaturate: f32,
    /// Amplitude of the lighting gradient and vignette, 0..1.
    pub lighting: f32,
    /// Darkness of the shadows under vehicles, 0..1.
    pub shadows: f32,
    /// Strength of the 8x8 block (compression-like) artefacts, 0..1.
    pub blocks: f32,
}

/// One domain: camera and appearance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainSettings {
    pub camera: Camera,
    pub appearance: Appearance,
}

impl DomainSettings {
    /// The source: a narrower field of view, objects over a narrow range of
    /// distances, flat saturated colours.
    pub fn source() -> Self {
        Self {
            camera: Camera {
                focal: 1.0,
                height_m: 1.5,
                horizon: 0.42,
                distance_m: [6.0, 26.0],
            },
            appearance: Appearance {
                strength: [1.0, 1.0],
                jitter: 14.0,
                texture: 0.0,
                noise: 2.0,
                blur: 0.0,
                cast: 0.0,
                desaturate: 0.0,
                lighting: 0.05,
                shadows: 0.0,
                blocks: 0.0,
            },
        }
    }

    /// The target: a wider field of view, objects smaller and spread wider in scale,
    /// textured, noisy, blurred, colour-cast images with block artefacts.
    pub fn target() -> Self {
        Self {
            camera: Camera {
                focal: 0.72,
                height_m: 1.4,
                horizon: 0.46,
                distance_m: [5.0, 45.0],
            },
            appearance: Appearance {
                strength: [0.5, 1.0],
                jitter: 14.0,
                texture: 1.0,
                noise: 9.0,
                blur: 0.8,
                cast: 28.0,
                desaturate: 0.35,
                lighting: 0.3,
                shadows: 0.45,
                blocks: 0.6,
            },
        }
    }
}

/// Everything `lse synth` generates from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthSettings {
    /// Image size `[width, height]` of both domains.
    pub size: [u32; 2],
    /// Images of the source (GTA5 layout) and of the target's train split.
    pub train: usize,
    /// Images of the target's val split.
    pub val: usize,
    pub seed: u64,
    pub source: DomainSettings,
    pub target: DomainSettings,
}

impl Default for SynthSettings {
    fn default() -> Self {
        Self {
            size: [512, 256],
            train: 500,
            val: 100,
            seed: 0,
            source: DomainSettings::source(),
            target: DomainSettings::target(),
        }
    }
}

/// Errors of generating the domains.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid image size {0}x{1} (at least 32x16)")]
    Size(u32, u32),
    #[error(
        "{path} already holds data that this command did not write with these settings (another run's settings, an interrupted run, or other files); choose another --out or remove it"
    )]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Which domain and split an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    Source,
    TargetTrain,
    TargetVal,
}

impl Part {
    fn salt(self) -> u64 {
        match self {
            Part::Source => 0x5052_4345,
            Part::TargetTrain => 0x5447_5452,
            Part::TargetVal => 0x5447_5641,
        }
    }
}

/// A generated image and its train-id label.
pub struct Scene {
    pub image: image::RgbImage,
    pub train_ids: image::GrayImage,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of one image's generator.
pub fn image_seed(seed: u64, part: Part, index: usize) -> u64 {
    splitmix(splitmix(seed ^ part.salt()) ^ index as u64)
}

/// Hash noise in [0, 1) at integer lattice point.
fn hash01(x: i32, y: i32, s: u32) -> f32 {
    let mut h = (x as u32).wrapping_mul(0x8DA6_B343)
        ^ (y as u32).wrapping_mul(0xD816_3841)
        ^ s.wrapping_mul(0xCB1A_B31F);
    h ^= h >> 13;
    h = h.wrapping_mul(0x5BD1_E995);
    h ^= h >> 15;
    (h >> 8) as f32 / (1u32 << 24) as f32
}

/// Smooth value noise in [0, 1) with lattice spacing `scale` pixels.
fn value_noise(x: f32, y: f32, scale: f32, s: u32) -> f32 {
    let (fx, fy) = (x / scale, y / scale);
    let (ix, iy) = (fx.floor(), fy.floor());
    let (tx, ty) = (fx - ix, fy - iy);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let (ix, iy) = (ix as i32, iy as i32);
    let a = hash01(ix, iy, s);
    let b = hash01(ix + 1, iy, s);
    let c = hash01(ix, iy + 1, s);
    let d = hash01(ix + 1, iy + 1, s);
    let top = a + (b - a) * sx;
    let bot = c + (d - c) * sx;
    top + (bot - top) * sy
}

/// Label, base colour and shading of every pixel, painted back to front.
struct Canvas {
    w: i32,
    h: i32,
    label: Vec<u8>,
    color: Vec<[f32; 3]>,
    shade: Vec<f32>,
}

impl Canvas {
    fn new(w: u32, h: u32) -> Self {
        let n = (w * h) as usize;
        Self {
            w: w as i32,
            h: h as i32,
            label: vec![labels::IGNORE; n],
            color: vec![[0.0; 3]; n],
            shade: vec![1.0; n],
        }
    }

    fn put(&mut self, x: i32, y: i32, class: u8, color: [f32; 3]) {
        if x >= 0 && y >= 0 && x < self.w && y < self.h {
            let i = (y * self.w + x) as usize;
            self.label[i] = class;
            self.color[i] = color;
            self.shade[i] = 1.0;
        }
    }

    /// Pixel range covering `[a, b)`, at least one pixel wide.
    fn span(a: f32, b: f32) -> (i32, i32) {
        let (a, b) = if b - a < 1.0 {
            let m = 0.5 * (a + b);
            (m - 0.5, m + 0.5)
        } else {
            (a, b)
        };
        ((a + 0.5).floor() as i32, (b + 0.5).floor() as i32)
    }

    fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, class: u8, color: [f32; 3]) {
        let (xa, xb) = Self::span(x0, x1);
        let (ya, yb) = Self::span(y0, y1);
        for y in ya.max(0)..yb.min(self.h) {
            for x in xa.max(0)..xb.min(self.w) {
                self.put(x, y, class, color);
            }
        }
    }

    fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, class: u8, color: [f32; 3]) {
        let (rx, ry) = (rx.max(0.5), ry.max(0.5));
        let (xa, xb) = Self::span(cx - rx, cx + rx);
        let (ya, yb) = Self::span(cy - ry, cy + ry);
        for y in ya.max(0)..yb.min(self.h) {
            for x in xa.max(0)..xb.min(self.w) {
                let dx = (x as f32 + 0.5 - cx) / rx;
                let dy = (y as f32 + 0.5 - cy) / ry;
                if dx * dx + dy * dy <= 1.0 || (rx <= 1.0 && ry <= 1.0) {
                    self.put(x, y, class, color);
                }
            }
        }
    }

    fn ring(&mut self, cx: f32, cy: f32, r: f32, thick: f32, class: u8, color: [f32; 3]) {
        let r = r.max(1.0);
        let inner = (r - thick.max(1.0)).max(0.0);
        let (xa, xb) = Self::span(cx - r, cx + r);
        let (ya, yb) = Self::span(cy - r, cy + r);
        for y in ya.max(0)..yb.min(self.h) {
            for x in xa.max(0)..xb.min(self.w) {
                let d = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)).sqrt();
                if d <= r && d >= inner {
                    self.put(x, y, class, color);
                }
            }
        }
    }

    /// A line of the given thickness from (x0, y0) to (x1, y1).
    fn line(&mut self, p: [f32; 4], thick: f32, class: u8, color: [f32; 3]) {
        let [x0, y0, x1, y1] = p;
        let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt().max(1.0);
        let steps = (len * 2.0).ceil() as i32;
        let r = (thick * 0.5).max(0.5);
        for k in 0..=steps {
            let t = k as f32 / steps as f32;
            self.rect(
                x0 + (x1 - x0) * t - r,
                y0 + (y1 - y0) * t - r,
                x0 + (x1 - x0) * t + r,
                y0 + (y1 - y0) * t + r,
                class,
                color,
            );
        }
    }

    /// Darkens the pixels of an ellipse without changing their labels.
    fn shadow(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, factor: f32) {
        let (xa, xb) = Self::span(cx - rx, cx + rx);
        let (ya, yb) = Self::span(cy - ry, cy + ry);
        for y in ya.max(0)..yb.min(self.h) {
            for x in xa.max(0)..xb.min(self.w) {
                let dx = (x as f32 + 0.5 - cx) / rx.max(0.5);
                let dy = (y as f32 + 0.5 - cy) / ry.max(0.5);
                let q = dx * dx + dy * dy;
                if q <= 1.0 {
                    let i = (y * self.w + x) as usize;
                    self.shade[i] *= 1.0 - factor * (1.0 - q).sqrt();
                }
            }
        }
    }
}

/// A segment of the street front on one side, between two distances.
#[derive(Clone, Copy)]
struct Segment {
    d_end: f32,
    class: u8,
    height_m: f32,
    color: [f32; 3],
}

struct Side {
    /// Lateral distance of the street front, metres.
    front_m: f32,
    /// Outer edge of the sidewalk, metres.
    kerb_out_m: f32,
    /// Whether the strip between sidewalk and front is terrain (else sidewalk).
    terrain: bool,
    segments: Vec<Segment>,
}

fn jitter(rng: &mut ChaCha8Rng, class: u8, amount: f32) -> [f32; 3] {
    let b = BASE_PALETTE[class as usize];
    let j = |rng: &mut ChaCha8Rng| {
        if amount > 0.0 {
            rng.random_range(-amount..=amount)
        } else {
            0.0
        }
    };
    // One brightness offset shared by the channels plus a smaller per-channel hue one.
    let common = j(rng);
    [
        (b[0] as f32 + common + 0.4 * j(rng)).clamp(0.0, 255.0),
        (b[1] as f32 + common + 0.4 * j(rng)).clamp(0.0, 255.0),
        (b[2] as f32 + common + 0.4 * j(rng)).clamp(0.0, 255.0),
    ]
}

fn make_side(
    rng: &mut ChaCha8Rng,
    road_half: f32,
    terrain: bool,
    jit: f32,
    geo: &Geometry,
    room_px: f32,
) -> Side {
    let kerb_out_m = road_half + rng.random_range(2.0..3.5);
    let front_m = kerb_out_m + rng.random_range(2.0..5.0);
    // The street front is on screen from this distance on.
    let d_edge = geo.f * front_m / room_px.max(1.0);
    let mut segments = Vec::new();
    let mut d = 0.0f32;
    // Make sure the first, large segments include a wall and a fence.
    let mut forced: Vec<u8> = vec![WALL, FENCE];
    while d < 200.0 {
        let len = rng.random_range(6.0..22.0);
        let class = if let Some(c) = forced.pop_if(|_| d > d_edge + 2.0) {
            c
        } else {
            match rng.random_range(0..10) {
                0..=5 => BUILDING,
                6 | 7 => VEGETATION,
                8 => WALL,
                _ => FENCE,
            }
        };
        let height_m = match class {
            BUILDING => rng.random_range(7.0..25.0),
            VEGETATION => rng.random_range(5.0..10.0),
            WALL => rng.random_range(1.2..2.5),
            _ => rng.random_range(1.0..1.8), // fence
        };
        d += len;
        segments.push(Segment {
            d_end: d,
            class,
            height_m,
            color: jitter(rng, class, jit),
        });
    }
    Side {
        front_m,
        kerb_out_m,
        terrain,
        segments,
    }
}

struct Geometry {
    f: f32,
    cx: f32,
    yh: f32,
    cam_h: f32,
}

impl Geometry {
    /// Screen position of a ground point at lateral `x_m`, distance `d`.
    fn ground(&self, x_m: f32, d: f32) -> (f32, f32) {
        (
            self.cx + self.f * x_m / d,
            self.yh + self.f * self.cam_h / d,
        )
    }
    /// Pixels per metre at distance `d`.
    fn ppm(&self, d: f32) -> f32 {
        self.f / d
    }
}

/// Generates one scene of a domain with its own generator. A scene in which an
/// object hides a promised class entirely is drawn again (deterministically, from
/// the next seed of the same image), up to 16 times.
pub fn generate(settings: &SynthSettings, part: Part, index: usize) -> Scene {
    let seed = image_seed(settings.seed, part, index);
    let mut scene = generate_with(settings, part, index, seed);
    for attempt in 1..16u64 {
        let mut seen = [false; 256];
        for &p in scene.train_ids.as_raw() {
            seen[p as usize] = true;
        }
        if PROMISED.iter().all(|&c| seen[c as usize]) {
            break;
        }
        scene = generate_with(settings, part, index, splitmix(seed ^ attempt));
    }
    scene
}

fn generate_with(settings: &SynthSettings, part: Part, index: usize, seed: u64) -> Scene {
    let dom = match part {
        Part::Source => &settings.source,
        _ => &settings.target,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ap = &dom.appearance;
    let street = Street::draw(&mut rng, &dom.camera, ap.jitter, settings.size);
    let mut cv = Canvas::new(settings.size[0], settings.size[1]);
    paint_background(&mut cv, &street);
    for (d, obj) in place_objects(&mut rng, &street, &dom.camera) {
        paint_object(&mut cv, &mut rng, &street.geo, d, obj, ap);
    }
    render(&cv, ap, &mut rng, index as u32 ^ (settings.seed as u32))
}

/// The random layout of one street: where the camera looks, the road, the two
/// sides and the colours of the background.
struct Street {
    geo: Geometry,
    w: u32,
    h: u32,
    road_half: f32,
    sides: [Side; 2],
    road_c: [f32; 3],
    side_c: [f32; 3],
    terr_c: [f32; 3],
    sky_c: [f32; 3],
    far_c: [f32; 3],
    /// Far skyline: building heights (metres at 150 m) in blocks of ~1/24 of the width.
    far_blocks: Vec<f32>,
}

impl Street {
    /// Draws the street (the order of the draws fixes the generated images).
    fn draw(rng: &mut ChaCha8Rng, cam: &Camera, jit: f32, [w, h]: [u32; 2]) -> Self {
        let geo = Geometry {
            f: cam.focal * w as f32,
            cx: w as f32 * (0.5 + rng.random_range(-0.08..0.08)),
            yh: h as f32 * (cam.horizon + rng.random_range(-0.03..0.03)),
            cam_h: cam.height_m,
        };
        let road_half = rng.random_range(3.5..6.0);
        let terrain_left = rng.random_bool(0.5);
        let terrain_right = !terrain_left || rng.random_bool(0.5);
        let sides = [
            make_side(rng, road_half, terrain_left, jit, &geo, geo.cx),
            make_side(rng, road_half, terrain_right, jit, &geo, w as f32 - geo.cx),
        ];
        let road_c = jitter(rng, ROAD, jit);
        let side_c = jitter(rng, SIDEWALK, jit);
        let terr_c = jitter(rng, TERRAIN, jit);
        let sky_c = jitter(rng, SKY, jit);
        let far_c = jitter(rng, BUILDING, jit);
        let far_blocks: Vec<f32> = (0..32).map(|_| rng.random_range(5.0..40.0)).collect();
        Self {
            geo,
            w,
            h,
            road_half,
            sides,
            road_c,
            side_c,
            terr_c,
            sky_c,
            far_c,
            far_blocks,
        }
    }

    /// Class and colour of a ground pixel (row `py`, `u` pixels right of the
    /// centre) in front of the street front of `side`.
    fn ground(&self, side: &Side, u: f32, py: f32) -> (u8, [f32; 3]) {
        let lat = (u * self.geo.cam_h / (py - self.geo.yh)).abs();
        if lat < self.road_half {
            (ROAD, self.road_c)
        } else if lat < side.kerb_out_m || !side.terrain {
            (SIDEWALK, self.side_c)
        } else {
            (TERRAIN, self.terr_c)
        }
    }
}

/// Background: ground, street front, sky, far skyline, column by column.
fn paint_background(cv: &mut Canvas, st: &Street) {
    for x in 0..st.w as i32 {
        paint_column(cv, st, x);
    }
}

/// One column of the background; the street front's segment and the far skyline
/// are found once per column.
fn paint_column(cv: &mut Canvas, st: &Street, x: i32) {
    let (geo, w) = (&st.geo, st.w);
    let px = x as f32 + 0.5;
    let u = px - geo.cx;
    let side = &st.sides[usize::from(u >= 0.0)];
    let au = u.abs().max(1e-3);
    // Distance of the street front in this column, and its ground row.
    let d_front = geo.f * side.front_m / au;
    let y_front = geo.yh + geo.f * geo.cam_h / d_front;
    let seg = side
        .segments
        .iter()
        .find(|s| s.d_end >= d_front)
        .copied()
        .filter(|_| d_front < 180.0);
    let top = seg.map_or(f32::INFINITY, |s| {
        geo.yh - geo.f * (s.height_m - geo.cam_h) / d_front
    });
    let bi = ((px / w as f32) * 24.0) as usize % st.far_blocks.len();
    let far_top = if (px - geo.cx).abs() < w as f32 * 0.45 {
        geo.yh - geo.f * st.far_blocks[bi] / 150.0
    } else {
        f32::INFINITY
    };
    for y in 0..st.h as i32 {
        let py = y as f32 + 0.5;
        let (class, color) = if py > y_front {
            // Ground in front of the street front.
            st.ground(side, u, py)
        } else {
            match seg {
                Some(s) if py >= top => (s.class, s.color),
                _ if py > geo.yh => (TERRAIN, st.terr_c),
                _ if py >= far_top => (BUILDING, st.far_c),
                _ => (SKY, st.sky_c),
            }
        };
        cv.put(x, y, class, color);
    }
}

/// An object standing on the ground at lateral position `x` (metres).
enum Obj {
    Car { x: f32, kind: u8 },
    Person { x: f32 },
    Cyclist { x: f32 },
    Pole { x: f32, light: bool },
    Tree { x: f32 },
}

/// Chooses the distances objects stand at.
struct Placement<'a> {
    geo: &'a Geometry,
    w: u32,
    /// The camera's range of distances, metres.
    range: [f32; 2],
}

impl Placement<'_> {
    /// Distance of an object at lateral `x_m`: at least far enough to be on screen;
    /// the `first` of each kind nearer, so that it is visible even in small images.
    fn near(&self, rng: &mut ChaCha8Rng, x_m: f32, height_m: f32, first: bool) -> f32 {
        let [dmin, dmax] = self.range;
        let (cx, fw, w) = (self.geo.cx, self.geo.f, self.w);
        let (yh, cam_h) = (self.geo.yh, self.geo.cam_h);
        let room = if x_m < 0.0 { cx } else { w as f32 - cx } - 2.0;
        let d_vis = (fw * (x_m.abs() + 1.0) / room.max(1.0))
            .max(fw * (height_m - cam_h) / (yh - 2.0).max(1.0));
        let lo = dmin.max(d_vis);
        let hi = dmax.max(lo * 1.3);
        if first {
            rng.random_range(lo..lo + (hi - lo) * 0.35)
        } else {
            rng.random_range(lo..hi)
        }
    }
}

/// The objects of a scene with their distances, far to near (the order they are
/// painted in).
fn place_objects(rng: &mut ChaCha8Rng, st: &Street, cam: &Camera) -> Vec<(f32, Obj)> {
    let at = Placement {
        geo: &st.geo,
        w: st.w,
        range: cam.distance_m,
    };
    let mut objs: Vec<(f32, Obj)> = Vec::new();
    place_vehicles(rng, st, &at, &mut objs);
    place_persons(rng, st, &at, &mut objs);
    let cyc_s = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
    let cyc_x = cyc_s * (st.road_half - 0.8);
    objs.push((at.near(rng, cyc_x, 1.9, true), Obj::Cyclist { x: cyc_x }));
    place_poles(rng, st, &at, &mut objs);
    place_trees(rng, st, &at, &mut objs);
    objs.sort_by(|a, b| b.0.total_cmp(&a.0));
    objs
}

/// One to four cars on the road, some of the later ones a bus or a truck.
fn place_vehicles(rng: &mut ChaCha8Rng, st: &Street, at: &Placement, objs: &mut Vec<(f32, Obj)>) {
    let road_half = st.road_half;
    let n_cars = rng.random_range(1..=4);
    for i in 0..n_cars {
        let lane = rng.random_range(-road_half + 1.2..road_half - 1.2);
        let kind = if i > 0 && rng.random_bool(0.25) {
            if rng.random_bool(0.5) { BUS } else { TRUCK }
        } else {
            CAR
        };
        objs.push((
            at.near(rng, lane, if kind == CAR { 1.6 } else { 3.3 }, i == 0),
            Obj::Car { x: lane, kind },
        ));
    }
}

/// One to four persons on the sidewalks.
fn place_persons(rng: &mut ChaCha8Rng, st: &Street, at: &Placement, objs: &mut Vec<(f32, Obj)>) {
    let n_persons = rng.random_range(1..=4);
    for i in 0..n_persons {
        let s = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
        let sd = &st.sides[usize::from(s > 0.0)];
        let lat = rng.random_range(st.road_half + 0.5..sd.kerb_out_m - 0.3);
        objs.push((
            at.near(rng, s * lat, 1.9, i == 0),
            Obj::Person { x: s * lat },
        ));
    }
}

/// Two to four poles at the kerbs, alternating sides; the first carries a traffic
/// light, the second a sign.
fn place_poles(rng: &mut ChaCha8Rng, st: &Street, at: &Placement, objs: &mut Vec<(f32, Obj)>) {
    let road_half = st.road_half;
    let n_poles = rng.random_range(2..=4);
    for i in 0..n_poles {
        let s = if i % 2 == 0 { -1.0 } else { 1.0 };
        objs.push((
            at.near(rng, s * (road_half + 0.4), 5.6, i < 2),
            Obj::Pole {
                x: s * (road_half + 0.4),
                light: if i < 2 { i == 0 } else { rng.random_bool(0.5) },
            },
        ));
    }
}

/// One to three trees on each terrain strip.
fn place_trees(rng: &mut ChaCha8Rng, st: &Street, at: &Placement, objs: &mut Vec<(f32, Obj)>) {
    for (k, sd) in st.sides.iter().enumerate() {
        if sd.terrain {
            let s = if k == 0 { -1.0 } else { 1.0 };
            for i in 0..rng.random_range(1..=3) {
                let lat = rng.random_range(sd.kerb_out_m + 0.6..sd.front_m - 0.4);
                let d = at.near(rng, s * lat, 4.0, i == 0);
                objs.push((d, Obj::Tree { x: s * lat }));
            }
        }
    }
}

/// Where an object stands on screen: its ground point and pixels per metre.
#[derive(Clone, Copy)]
struct Spot {
    gx: f32,
    gy: f32,
    k: f32,
}

/// Paints one object at distance `d`.
fn paint_object(
    cv: &mut Canvas,
    rng: &mut ChaCha8Rng,
    geo: &Geometry,
    d: f32,
    obj: Obj,
    ap: &Appearance,
) {
    let jit = ap.jitter;
    let spot = |x: f32| {
        let (gx, gy) = geo.ground(x, d);
        Spot {
            gx,
            gy,
            k: geo.ppm(d),
        }
    };
    match obj {
        Obj::Car { x, kind } => paint_vehicle(cv, rng, spot(x), kind, jit, ap.shadows),
        Obj::Person { x } => paint_person(cv, rng, spot(x), jit),
        Obj::Cyclist { x } => paint_cyclist(cv, rng, spot(x), jit),
        Obj::Pole { x, light } => paint_pole(cv, rng, spot(x), light, jit),
        Obj::Tree { x } => paint_tree(cv, rng, spot(x), jit),
    }
}

/// A car, truck or bus (`kind`, its train id) with its shadow and wheels.
fn paint_vehicle(cv: &mut Canvas, rng: &mut ChaCha8Rng, at: Spot, kind: u8, jit: f32, shadow: f32) {
    let Spot { gx, gy, k } = at;
    let (wm, hm) = match kind {
        CAR => (1.8, rng.random_range(1.35..1.6)),
        BUS => (2.5, 3.2),
        _ => (2.4, 3.0), // truck
    };
    let c = jitter(rng, kind, jit);
    let hw = 0.5 * wm * k;
    if shadow > 0.0 {
        cv.shadow(gx, gy, hw * 1.3, 0.25 * k, shadow);
    }
    match kind {
        CAR => paint_car_body(cv, at, hw, hm, c),
        BUS => paint_bus_body(cv, at, hw, hm, c),
        _ => paint_truck_body(cv, at, hw, hm, c),
    }
    let wheel = [28.0, 28.0, 30.0];
    for sx in [-0.7f32, 0.7] {
        cv.ellipse(gx + sx * hw, gy - 0.25 * k, 0.3 * k, 0.25 * k, kind, wheel);
    }
}

/// A car's body, cabin and windows (half width `hw` pixels, height `hm` metres).
fn paint_car_body(cv: &mut Canvas, at: Spot, hw: f32, hm: f32, c: [f32; 3]) {
    let Spot { gx, gy, k } = at;
    cv.rect(
        gx - hw,
        gy - 0.95 * hm * k * 0.62,
        gx + hw,
        gy - 0.25 * k,
        CAR,
        c,
    );
    cv.rect(
        gx - hw * 0.75,
        gy - hm * k,
        gx + hw * 0.75,
        gy - 0.55 * hm * k,
        CAR,
        c,
    );
    let glass = [c[0] * 0.4 + 60.0, c[1] * 0.4 + 70.0, c[2] * 0.4 + 90.0];
    cv.rect(
        gx - hw * 0.62,
        gy - 0.93 * hm * k,
        gx + hw * 0.62,
        gy - 0.64 * hm * k,
        CAR,
        glass,
    );
}

/// A bus's body and its band of windows.
fn paint_bus_body(cv: &mut Canvas, at: Spot, hw: f32, hm: f32, c: [f32; 3]) {
    let Spot { gx, gy, k } = at;
    cv.rect(gx - hw, gy - hm * k, gx + hw, gy - 0.25 * k, BUS, c);
    let glass = [60.0, 70.0, 90.0];
    cv.rect(
        gx - hw * 0.9,
        gy - 0.9 * hm * k,
        gx + hw * 0.9,
        gy - 0.55 * hm * k,
        BUS,
        glass,
    );
}

/// A truck's body and its darker lower part.
fn paint_truck_body(cv: &mut Canvas, at: Spot, hw: f32, hm: f32, c: [f32; 3]) {
    let Spot { gx, gy, k } = at;
    cv.rect(gx - hw, gy - hm * k, gx + hw, gy - 0.25 * k, TRUCK, c);
    let cab = [c[0] * 0.7, c[1] * 0.7, c[2] * 0.7];
    cv.rect(
        gx - hw * 0.95,
        gy - 0.45 * hm * k,
        gx + hw * 0.95,
        gy - 0.25 * k,
        TRUCK,
        cab,
    );
}

/// A person: legs, torso, head.
fn paint_person(cv: &mut Canvas, rng: &mut ChaCha8Rng, at: Spot, jit: f32) {
    let Spot { gx, gy, k } = at;
    let hm = rng.random_range(1.55..1.9);
    let c = jitter(rng, PERSON, jit * 2.0);
    let legs = [c[0] * 0.4, c[1] * 0.4, c[2] * 0.5 + 30.0];
    let skin = [220.0, 180.0, 150.0];
    cv.rect(
        gx - 0.18 * k,
        gy - 0.48 * hm * k,
        gx - 0.02 * k,
        gy,
        PERSON,
        legs,
    );
    cv.rect(
        gx + 0.02 * k,
        gy - 0.48 * hm * k,
        gx + 0.18 * k,
        gy,
        PERSON,
        legs,
    );
    cv.rect(
        gx - 0.25 * k,
        gy - 0.85 * hm * k,
        gx + 0.25 * k,
        gy - 0.46 * hm * k,
        PERSON,
        c,
    );
    cv.ellipse(gx, gy - 0.92 * hm * k, 0.11 * k, 0.12 * k, PERSON, skin);
}

/// A bicycle and its rider.
fn paint_cyclist(cv: &mut Canvas, rng: &mut ChaCha8Rng, at: Spot, jit: f32) {
    let Spot { gx, gy, k } = at;
    let bc = jitter(rng, BICYCLE, jit);
    let r = 0.34 * k;
    let (w0, w1) = (gx - 0.55 * k, gx + 0.55 * k);
    cv.ring(w0, gy - r, r, 0.08 * k, BICYCLE, bc);
    cv.ring(w1, gy - r, r, 0.08 * k, BICYCLE, bc);
    let t = 0.07 * k;
    cv.line([w0, gy - r, gx, gy - 2.0 * r], t, BICYCLE, bc);
    cv.line([gx, gy - 2.0 * r, w1, gy - r], t, BICYCLE, bc);
    cv.line([w0, gy - r, gx - 0.1 * k, gy - 2.3 * r], t, BICYCLE, bc);
    let rc = jitter(rng, RIDER, jit);
    let skin = [220.0, 180.0, 150.0];
    cv.rect(
        gx - 0.25 * k,
        gy - 1.65 * k,
        gx + 0.15 * k,
        gy - 2.2 * r,
        RIDER,
        rc,
    );
    cv.line(
        [gx - 0.05 * k, gy - 2.2 * r, gx + 0.1 * k, gy - r],
        0.12 * k,
        RIDER,
        rc,
    );
    cv.ellipse(
        gx - 0.02 * k,
        gy - 1.75 * k,
        0.11 * k,
        0.12 * k,
        RIDER,
        skin,
    );
}

/// A pole carrying a traffic light or a traffic sign.
fn paint_pole(cv: &mut Canvas, rng: &mut ChaCha8Rng, at: Spot, light: bool, jit: f32) {
    let Spot { gx, gy, k } = at;
    let hm = rng.random_range(3.2..4.5);
    let pc = jitter(rng, POLE, jit);
    cv.rect(gx - 0.07 * k, gy - hm * k, gx + 0.07 * k, gy, POLE, pc);
    if light {
        paint_traffic_light(cv, rng, at, hm, jit);
    } else {
        paint_traffic_sign(cv, rng, at, hm, jit);
    }
}

/// A traffic light's box and its lit lamp on top of a pole `hm` metres high.
fn paint_traffic_light(cv: &mut Canvas, rng: &mut ChaCha8Rng, at: Spot, hm: f32, jit: f32) {
    let Spot { gx, gy, k } = at;
    let lc = jitter(rng, TRAFFIC_LIGHT, jit * 0.5);
    let (bx0, bx1) = (gx - 0.18 * k, gx + 0.18 * k);
    let (by0, by1) = (gy - (hm + 0.9) * k, gy - hm * k);
    cv.rect(bx0, by0, bx1, by1, TRAFFIC_LIGHT, lc);
    let lamp = match rng.random_range(0..3) {
        0 => ([230.0, 40.0, 30.0], 0.2),
        1 => ([240.0, 180.0, 20.0], 0.5),
        _ => ([40.0, 220.0, 90.0], 0.8),
    };
    cv.ellipse(
        gx,
        by0 + (by1 - by0) * lamp.1,
        0.1 * k,
        0.1 * k,
        TRAFFIC_LIGHT,
        lamp.0,
    );
}

/// A square or round traffic sign on top of a pole `hm` metres high.
fn paint_traffic_sign(cv: &mut Canvas, rng: &mut ChaCha8Rng, at: Spot, hm: f32, jit: f32) {
    let Spot { gx, gy, k } = at;
    let sc = jitter(rng, TRAFFIC_SIGN, jit);
    let cy = gy - (hm + 0.25) * k;
    if rng.random_bool(0.5) {
        cv.rect(
            gx - 0.35 * k,
            cy - 0.35 * k,
            gx + 0.35 * k,
            cy + 0.35 * k,
            TRAFFIC_SIGN,
            sc,
        );
    } else {
        cv.ellipse(gx, cy, 0.35 * k, 0.35 * k, TRAFFIC_SIGN, sc);
    }
}

/// A tree: trunk and crown.
fn paint_tree(cv: &mut Canvas, rng: &mut ChaCha8Rng, at: Spot, jit: f32) {
    let Spot { gx, gy, k } = at;
    let hm = rng.random_range(4.0..8.0);
    let vc = jitter(rng, VEGETATION, jit);
    let trunk = [vc[0] * 0.5 + 50.0, vc[1] * 0.45 + 20.0, vc[2] * 0.4];
    cv.rect(
        gx - 0.15 * k,
        gy - 0.6 * hm * k,
        gx + 0.15 * k,
        gy,
        VEGETATION,
        trunk,
    );
    let r = rng.random_range(1.2..2.2);
    cv.ellipse(gx, gy - (hm - r) * k, r * k, r * 0.9 * k, VEGETATION, vc);
}

/// One image's draws of the appearance, each effect scaled by the image's strength.
struct Look {
    tex: f32,
    noise: f32,
    blur: f32,
    desat: f32,
    light: f32,
    blocks: f32,
    cast_dir: [f32; 3],
    cast: f32,
    light_dir: f32,
    /// Window grid spacing, pixels.
    win: f32,
    /// Seed of the texture and noise hashes.
    seed: u32,
}

impl Look {
    /// Draws the look (the order of the draws fixes the generated images).
    fn draw(ap: &Appearance, rng: &mut ChaCha8Rng, salt: u32) -> Self {
        let s = if ap.strength[1] > ap.strength[0] {
            rng.random_range(ap.strength[0]..=ap.strength[1])
        } else {
            ap.strength[0]
        };
        let cast_dir: [f32; 3] = match rng.random_range(0..3) {
            0 => [1.0, 0.45, -0.6], // warm
            1 => [-0.5, 0.1, 0.9],  // cool
            _ => [-0.2, 0.7, -0.3], // green-ish fluorescent
        };
        let cast = ap.cast * s * rng.random_range(0.6..1.0);
        let light_dir = rng.random_range(-1.0f32..1.0);
        let win = rng.random_range(7.0f32..12.0);
        let seed = rng.random::<u32>() ^ salt;
        Self {
            tex: ap.texture * s,
            noise: ap.noise * s,
            blur: (ap.blur * s).min(1.0),
            desat: (ap.desaturate * s).min(1.0),
            light: ap.lighting * s,
            blocks: (ap.blocks * s).min(1.0),
            cast_dir,
            cast,
            light_dir,
            win,
            seed,
        }
    }
}

/// Turns the painted canvas into the domain's image.
fn render(cv: &Canvas, ap: &Appearance, rng: &mut ChaCha8Rng, salt: u32) -> Scene {
    let (w, h) = (cv.w as usize, cv.h as usize);
    let look = Look::draw(ap, rng, salt);
    let mut img = shade(cv, &look);
    if look.desat > 0.0 || look.cast > 0.0 {
        for p in img.chunks_exact_mut(3) {
            let g = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
            for (v, dir) in p.iter_mut().zip(look.cast_dir) {
                *v = *v + (g - *v) * look.desat + look.cast * dir;
            }
        }
    }
    if look.blur > 0.0 {
        let blurred = blur3(&img, w, h);
        for (p, b) in img.iter_mut().zip(&blurred) {
            *p += (*b - *p) * look.blur;
        }
    }
    if look.noise > 0.0 {
        add_noise(&mut img, w, look.noise, look.seed);
    }
    if look.blocks > 0.0 {
        block_artefacts(&mut img, w, h, look.blocks);
    }
    let rgb: Vec<u8> = img
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    Scene {
        image: image::RgbImage::from_raw(w as u32, h as u32, rgb).expect("buffer size matches"),
        train_ids: image::GrayImage::from_raw(w as u32, h as u32, cv.label.clone())
            .expect("buffer size matches"),
    }
}

/// The canvas's colours with texture, shadows and lighting, as RGB floats.
fn shade(cv: &Canvas, look: &Look) -> Vec<f32> {
    let (w, h) = (cv.w as usize, cv.h as usize);
    let mut img = vec![0f32; w * h * 3];
    img.par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
        let fy = y as f32 + 0.5;
        for x in 0..w {
            let i = y * w + x;
            let mut c = cv.color[i];
            let fx = x as f32 + 0.5;
            if look.tex > 0.0 {
                let m = texture(&mut c, cv.label[i], fx, fy, look, h);
                c = [c[0] * m, c[1] * m, c[2] * m];
            }
            let sh = cv.shade[i];
            let lx = fx / w as f32 - 0.5;
            let ly = fy / h as f32 - 0.5;
            let l = 1.0 + look.light * (look.light_dir * lx - 0.8 * (lx * lx + ly * ly));
            for k in 0..3 {
                row[x * 3 + k] = c[k] * sh * l;
            }
        }
    });
    img
}

/// The texture of a pixel of `class` at (fx, fy): a brightness factor, after
/// blending `c` toward a texture colour for terrain and clouds.
fn texture(c: &mut [f32; 3], class: u8, fx: f32, fy: f32, look: &Look, h: usize) -> f32 {
    let (tex, win, seed) = (look.tex, look.win, look.seed);
    match class {
        BUILDING => {
            // window grid with per-block brightness
            let gx = (fx / win).fract();
            let gy = (fy / (win * 1.3)).fract();
            let window = gx > 0.3 && gx < 0.8 && gy > 0.25 && gy < 0.75;
            let b = 0.85 + 0.3 * value_noise(fx, fy, 30.0, seed);
            if window { b * (1.0 - 0.5 * tex) } else { b }
        }
        VEGETATION => {
            let n =
                0.6 * value_noise(fx, fy, 3.0, seed ^ 1) + 0.4 * value_noise(fx, fy, 9.0, seed ^ 2);
            1.0 + tex * 0.9 * (n - 0.5)
        }
        TERRAIN => {
            let n = value_noise(fx, fy, 5.0, seed ^ 3);
            *c = mix(*c, [150.0, 125.0, 80.0], tex * 0.5 * n);
            1.0 + tex * 0.3 * (value_noise(fx, fy, 2.0, seed ^ 4) - 0.5)
        }
        SKY => {
            let n = 0.65 * value_noise(fx, fy, 40.0, seed ^ 5)
                + 0.35 * value_noise(fx, fy, 12.0, seed ^ 6);
            let cloud = ((n - 0.45) * 2.5).clamp(0.0, 1.0) * tex;
            *c = mix(*c, [235.0, 235.0, 240.0], cloud * 0.85);
            1.0 - 0.1 * tex * (fy / h as f32)
        }
        ROAD => {
            let n = value_noise(fx, fy, 2.0, seed ^ 7) - 0.5;
            let patch = value_noise(fx, fy, 25.0, seed ^ 8) - 0.5;
            1.0 + tex * (0.25 * n + 0.35 * patch)
        }
        SIDEWALK => {
            let line = (fx % 12.0) < 1.2 || (fy % 6.0) < 1.0;
            let n = value_noise(fx, fy, 3.0, seed ^ 9) - 0.5;
            (if line { 1.0 - 0.3 * tex } else { 1.0 }) + 0.2 * tex * n
        }
        WALL | FENCE => {
            let n = value_noise(fx, fy, 4.0, seed ^ 10) - 0.5;
            let slat = if class == FENCE && (fx % 4.0) < 1.0 {
                1.0 - 0.35 * tex
            } else {
                1.0
            };
            slat + 0.3 * tex * n
        }
        CAR | TRUCK | BUS => {
            // specular sheen: brighter toward the top of each pixel row band
            1.0 + tex * 0.25 * (value_noise(fx, fy, 6.0, seed ^ 11) - 0.5)
        }
        _ => 1.0 + tex * 0.3 * (value_noise(fx, fy, 3.0, seed ^ 12) - 0.5),
    }
}

/// Approximately Gaussian sensor noise of standard deviation `noise`.
fn add_noise(img: &mut [f32], w: usize, noise: f32, seed: u32) {
    img.par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
        for (x, p) in row.iter_mut().enumerate() {
            // approximately Gaussian: sum of two uniforms, variance 1/6 -> scale
            let a = hash01(x as i32, y as i32, seed ^ 0xA5A5);
            let b = hash01(x as i32, y as i32, seed ^ 0x5A5A);
            *p += noise * (a + b - 1.0) * 2.449;
        }
    });
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// 3x3 Gaussian blur ([1 2 1] / 4 each way), edges clamped.
fn blur3(img: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut tmp = vec![0f32; img.len()];
    for y in 0..h {
        for x in 0..w {
            let (xl, xr) = (x.saturating_sub(1), (x + 1).min(w - 1));
            for k in 0..3 {
                let r = &img[y * w * 3..];
                tmp[(y * w + x) * 3 + k] =
                    0.25 * r[xl * 3 + k] + 0.5 * r[x * 3 + k] + 0.25 * r[xr * 3 + k];
            }
        }
    }
    let mut out = vec![0f32; img.len()];
    for y in 0..h {
        let (yu, yd) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for i in 0..w * 3 {
            out[y * w * 3 + i] =
                0.25 * tmp[yu * w * 3 + i] + 0.5 * tmp[y * w * 3 + i] + 0.25 * tmp[yd * w * 3 + i];
        }
    }
    out
}

/// Compression-like artefacts: each 8x8 block loses part of its detail (blend toward
/// the block mean) and its colours are quantised.
fn block_artefacts(img: &mut [f32], w: usize, h: usize, strength: f32) {
    let step = 1.0 + 10.0 * strength;
    for by in (0..h).step_by(8) {
        for bx in (0..w).step_by(8) {
            let (ye, xe) = ((by + 8).min(h), (bx + 8).min(w));
            let mut mean = [0f32; 3];
            let n = ((ye - by) * (xe - bx)) as f32;
            for y in by..ye {
                for x in bx..xe {
                    for k in 0..3 {
                        mean[k] += img[(y * w + x) * 3 + k];
                    }
                }
            }
            for m in &mut mean {
                *m /= n;
            }
            for y in by..ye {
                for x in bx..xe {
                    for k in 0..3 {
                        let v = &mut img[(y * w + x) * 3 + k];
                        let detail = (*v - mean[k]) * (1.0 - 0.45 * strength);
                        *v = mean[k] + (detail / step).round() * step;
                    }
                }
            }
        }
    }
}

/// One file `lse synth` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub part: Part,
    pub index: usize,
    pub image: PathBuf,
    pub label: PathBuf,
}

/// City names of the target's splits (train and val use different cities, as in
/// Cityscapes).
const TRAIN_CITIES: [&str; 3] = ["ashford", "brookvale", "corbridge"];
const VAL_CITIES: [&str; 2] = ["dunmore", "elmstead"];

/// The layout the source is written in.
const SOURCE_LAYOUT: DatasetKind = DatasetKind::Gta5;
/// The layout the target is written in (with `train` and `val` splits).
const TARGET_LAYOUT: DatasetKind = DatasetKind::Cityscapes;

/// Every image and label `lse synth` writes under `out`: the source in the
/// [`SOURCE_LAYOUT`] under `out/source`, the target in the [`TARGET_LAYOUT`] under
/// `out/target`, both with Cityscapes label ids.
pub fn jobs(settings: &SynthSettings, out: &Path) -> Vec<Job> {
    let mut v = Vec::with_capacity(2 * settings.train + settings.val);
    let src = out.join("source");
    let layout = SOURCE_LAYOUT.layout();
    let (images, labels) = (
        layout.image_dir(&src, "train"),
        layout.label_dir(&src, "train"),
    );
    for i in 0..settings.train {
        let key = format!("{:05}", i + 1);
        v.push(Job {
            part: Part::Source,
            index: i,
            image: images.join(layout.files.image_name(&key)),
            label: labels.join(layout.files.label_name(&key)),
        });
    }
    let tgt = out.join("target");
    let layout = TARGET_LAYOUT.layout();
    for (part, split, n, cities) in [
        (
            Part::TargetTrain,
            "train",
            settings.train,
            &TRAIN_CITIES[..],
        ),
        (Part::TargetVal, "val", settings.val, &VAL_CITIES[..]),
    ] {
        for i in 0..n {
            let city = cities[i % cities.len()];
            let key = format!("{city}_{:06}_{:06}", i / cities.len(), 19);
            v.push(Job {
                part,
                index: i,
                image: layout
                    .image_dir(&tgt, split)
                    .join(city)
                    .join(layout.files.image_name(&key)),
                label: layout
                    .label_dir(&tgt, split)
                    .join(city)
                    .join(layout.files.label_name(&key)),
            });
        }
    }
    v
}

/// What [`write_domains`] did.
#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub out: PathBuf,
    pub source_images: usize,
    pub target_train_images: usize,
    pub target_val_images: usize,
    pub seconds: f64,
    pub settings: SynthSettings,
}

/// Generates both domains under `out` (`out/source`, `out/target`, `out/synth.json`).
/// `progress` is called once per written image.
pub fn write_domains(
    settings: &SynthSettings,
    out: &Path,
    progress: &(dyn Fn() + Sync),
) -> Result<SynthSummary, SynthError> {
    let [w, h] = settings.size;
    if w < 32 || h < 16 || w > 16384 || h > 16384 {
        return Err(SynthError::Size(w, h));
    }
    let record = out.join("synth.json");
    let json = serde_json::to_string_pretty(settings).expect("settings serialise");
    if let Ok(old) = std::fs::read_to_string(&record) {
        if old != json {
            return Err(SynthError::Exists {
                path: out.to_path_buf(),
            });
        }
    } else if out.join("source").exists() || out.join("target").exists() {
        return Err(SynthError::Exists {
            path: out.to_path_buf(),
        });
    }
    std::fs::create_dir_all(out).map_err(|source| SynthError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let t0 = std::time::Instant::now();
    let lut = labels::train_to_label_lut();
    jobs(settings, out)
        .par_iter()
        .try_for_each(|job| -> Result<(), SynthError> {
            let scene = generate(settings, job.part, job.index);
            imageio::write_rgb_png(&job.image, &scene.image)?;
            let mut ids = scene.train_ids;
            for p in ids.iter_mut() {
                *p = lut[*p as usize];
            }
            imageio::write_gray_png(&job.label, &ids)?;
            progress();
            Ok(())
        })?;
    imageio::write_atomic(&record, json.as_bytes())?;
    Ok(SynthSummary {
        out: out.to_path_buf(),
        source_images: settings.train,
        target_train_images: settings.train,
        target_val_images: settings.val,
        seconds: t0.elapsed().as_secs_f64(),
        settings: settings.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SynthSettings {
        SynthSettings {
            size: [256, 128],
            train: 3,
            val: 3,
            ..SynthSettings::default()
        }
    }

    #[test]
    fn same_seed_same_scene_other_seed_other_scene() {
        let s = small();
        let a = generate(&s, Part::TargetVal, 1);
        let b = generate(&s, Part::TargetVal, 1);
        assert_eq!(a.image, b.image);
        assert_eq!(a.train_ids, b.train_ids);
        let c = generate(&SynthSettings { seed: 1, ..s }, Part::TargetVal, 1);
        assert_ne!(a.image, c.image);
    }

    #[test]
    fn every_promised_class_in_every_image() {
        let s = small();
        for part in [Part::Source, Part::TargetTrain, Part::TargetVal] {
            for i in 0..8 {
                let scene = generate(&s, part, i);
                let mut seen = [false; 256];
                for &p in scene.train_ids.as_raw() {
                    seen[p as usize] = true;
                }
                for c in PROMISED {
                    assert!(seen[c as usize], "{part:?} {i}: class {c} missing");
                }
                assert!(
                    !seen[labels::IGNORE as usize],
                    "{part:?} {i}: unpainted pixels"
                );
            }
        }
    }

    /// FNV-1a, a hash whose value does not depend on the Rust version.
    fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        h
    }

    /// The checksum of the images and labels of seeds 0 and 7, images 0 and 3, of
    /// one part at one size (default settings otherwise).
    fn checksum(size: [u32; 2], part: Part) -> u64 {
        let mut h = 0xCBF2_9CE4_8422_2325;
        for seed in [0, 7] {
            let s = SynthSettings {
                size,
                seed,
                ..SynthSettings::default()
            };
            for index in [0, 3] {
                let scene = generate(&s, part, index);
                h = fnv1a(h, scene.image.as_raw());
                h = fnv1a(h, scene.train_ids.as_raw());
            }
        }
        h
    }

    /// The generated images stay byte-identical (refactors must not change them).
    /// Changing the generator or the defaults of `DomainSettings::source()` /
    /// `target()` on purpose changes these: replace `GOLDEN` with the table this
    /// test prints on failure.
    #[test]
    fn golden_checksums() {
        const GOLDEN: [([u32; 2], Part, u64); 6] = [
            ([64, 32], Part::Source, 0xd7c59fa16bd042b2),
            ([64, 32], Part::TargetTrain, 0xbc23e8373d6bea47),
            ([64, 32], Part::TargetVal, 0x66b0b1a5e952a232),
            ([128, 64], Part::Source, 0x2ef1d9e044863b1f),
            ([128, 64], Part::TargetTrain, 0xbd0e1bb139501ea5),
            ([128, 64], Part::TargetVal, 0x743272cee7f6f10c),
        ];
        let actual: Vec<u64> = GOLDEN
            .iter()
            .map(|&(size, part, _)| checksum(size, part))
            .collect();
        if GOLDEN.iter().zip(&actual).any(|(g, &a)| g.2 != a) {
            let mut table = String::new();
            for (&(size, part, _), a) in GOLDEN.iter().zip(&actual) {
                table += &format!("            ({size:?}, Part::{part:?}, {a:#018x}),\n");
            }
            panic!("generated scenes changed; the new checksums are:\n{table}");
        }
    }

    #[test]
    fn written_label_ids_read_back_as_the_train_ids_in_both_layouts() {
        let written = labels::train_to_label_lut();
        for kind in [SOURCE_LAYOUT, TARGET_LAYOUT] {
            let to_train = (kind.layout().labels.to_train)();
            for t in PROMISED.iter().chain(&OCCASIONAL) {
                assert_eq!(to_train[written[*t as usize] as usize], *t, "{kind}");
            }
        }
    }

    #[test]
    fn layout_sky_on_top_road_at_the_bottom() {
        let s = small();
        let scene = generate(&s, Part::Source, 0);
        let (w, h) = scene.train_ids.dimensions();
        let top = scene.train_ids.get_pixel(0, 0)[0];
        assert!(
            top == SKY || top == BUILDING || top == VEGETATION,
            "top-left is {top}"
        );
        let bottom_road = (0..w)
            .filter(|&x| scene.train_ids.get_pixel(x, h - 1)[0] == ROAD)
            .count();
        assert!(bottom_road > 0, "road at the bottom row");
    }
}
