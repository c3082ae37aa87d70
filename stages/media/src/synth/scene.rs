//! The content of a scene: which shape, in which colour, moving how, over
//! which background, and where the shape is at each moment.

use serde::{Deserialize, Serialize};

/// The shape drawn in a scene. Each is symmetric about its centre pixel, so
/// the centre always carries the shape's colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Square,
    Circle,
    Triangle,
    Diamond,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 5] = [Shape::Square, Shape::Circle, Shape::Triangle, Shape::Diamond, Shape::Cross];

    /// The word used in narration and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Square => "square",
            Shape::Circle => "circle",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
            Shape::Cross => "cross",
        }
    }

    /// Whether the offset (`dx`, `dy`) from the centre lies inside a shape
    /// of half-extent `r`.
    pub(super) fn contains(self, dx: f64, dy: f64, r: f64) -> bool {
        match self {
            Shape::Square => dx.abs() <= r && dy.abs() <= r,
            Shape::Circle => dx * dx + dy * dy <= r * r,
            // Apex up at (0, -r), base from (-r, r) to (r, r).
            Shape::Triangle => dy >= -r && dy <= r && dx.abs() <= (dy + r) * 0.5,
            Shape::Diamond => dx.abs() + dy.abs() <= r,
            Shape::Cross => {
                let arm = r * 0.35;
                (dx.abs() <= arm && dy.abs() <= r) || (dy.abs() <= arm && dx.abs() <= r)
            }
        }
    }
}

/// The shape's colour. Saturated and far apart so they survive chroma
/// subsampling, compression and downscaling to 112x112.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    White,
}

impl Colour {
    pub const ALL: [Colour; 6] =
        [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple, Colour::White];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::White => "white",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [230, 40, 40],
            Colour::Green => [40, 200, 60],
            Colour::Blue => [50, 100, 240],
            Colour::Yellow => [240, 220, 40],
            Colour::Purple => [160, 60, 200],
            Colour::White => [240, 240, 240],
        }
    }
}

/// How the shape moves during its scene. Movements go from one side of the
/// frame to the other over the whole scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Motion {
    Left,
    Right,
    Up,
    Down,
    Grow,
    Shrink,
    Still,
}

impl Motion {
    pub const ALL: [Motion; 7] =
        [Motion::Left, Motion::Right, Motion::Up, Motion::Down, Motion::Grow, Motion::Shrink, Motion::Still];

    pub fn name(self) -> &'static str {
        match self {
            Motion::Left => "left",
            Motion::Right => "right",
            Motion::Up => "up",
            Motion::Down => "down",
            Motion::Grow => "grow",
            Motion::Shrink => "shrink",
            Motion::Still => "still",
        }
    }

    /// Third-person verb phrase: "a red circle {moves to the left}".
    pub(super) fn verb(self) -> &'static str {
        match self {
            Motion::Left => "moves to the left",
            Motion::Right => "moves to the right",
            Motion::Up => "moves up",
            Motion::Down => "moves down",
            Motion::Grow => "grows bigger",
            Motion::Shrink => "shrinks",
            Motion::Still => "stays still in the middle",
        }
    }

    /// Gerund phrase: "a red circle {moving to the left}".
    pub(super) fn gerund(self) -> &'static str {
        match self {
            Motion::Left => "moving to the left",
            Motion::Right => "moving to the right",
            Motion::Up => "moving up",
            Motion::Down => "moving down",
            Motion::Grow => "growing bigger",
            Motion::Shrink => "shrinking",
            Motion::Still => "staying still",
        }
    }
}

/// The plain background of a scene. All are dark so every shape colour
/// stands out against every background.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    Black,
    Grey,
    Navy,
    Brown,
}

impl Background {
    pub const ALL: [Background; 4] = [Background::Black, Background::Grey, Background::Navy, Background::Brown];

    pub fn name(self) -> &'static str {
        match self {
            Background::Black => "black",
            Background::Grey => "grey",
            Background::Navy => "navy",
            Background::Brown => "brown",
        }
    }

    /// How narration says it.
    pub(super) fn words(self) -> &'static str {
        match self {
            Background::Black => "black",
            Background::Grey => "grey",
            Background::Navy => "dark blue",
            Background::Brown => "dark brown",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::Black => [8, 8, 8],
            Background::Grey => [72, 72, 72],
            Background::Navy => [16, 24, 72],
            Background::Brown => [64, 40, 24],
        }
    }
}

/// The colour of frames (or parts of the timeline) that no scene covers.
pub const GAP_RGB: [u8; 3] = [0, 0, 0];

/// One scene: from `start_s` (inclusive) to `end_s` (exclusive) seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub start_s: f64,
    pub end_s: f64,
    pub shape: Shape,
    pub colour: Colour,
    pub motion: Motion,
    pub background: Background,
}

/// Where the shape is and how big, in pixels, at a point of a scene.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// Centre, in pixel coordinates (pixel `x` covers `[x, x + 1)`).
    pub cx: f64,
    pub cy: f64,
    /// Half-extent: the shape fits in a `2r` x `2r` box around the centre.
    pub r: f64,
}

impl Scene {
    /// Placement of the shape at `progress` (0 at the scene's start, 1 at
    /// its end) in a `width` x `height` frame.
    pub fn placement(&self, progress: f64, width: u32, height: u32) -> Placement {
        let (w, h) = (f64::from(width), f64::from(height));
        let m = w.min(h);
        let p = progress.clamp(0.0, 1.0);
        let r = m * 0.18;
        // Travel keeps the whole shape inside the frame, so every frame of
        // a scene shows the complete shape.
        let lerp = |a: f64, b: f64| a + (b - a) * p;
        let (x_lo, x_hi) = (r * 1.1, w - r * 1.1);
        let (y_lo, y_hi) = (r * 1.1, h - r * 1.1);
        let (cx, cy) = (w * 0.5, h * 0.5);
        match self.motion {
            Motion::Left => Placement { cx: lerp(x_hi, x_lo), cy, r },
            Motion::Right => Placement { cx: lerp(x_lo, x_hi), cy, r },
            Motion::Up => Placement { cx, cy: lerp(y_hi, y_lo), r },
            Motion::Down => Placement { cx, cy: lerp(y_lo, y_hi), r },
            Motion::Grow => Placement { cx, cy, r: lerp(m * 0.06, m * 0.32) },
            Motion::Shrink => Placement { cx, cy, r: lerp(m * 0.32, m * 0.06) },
            Motion::Still => Placement { cx, cy, r },
        }
    }

    pub(super) fn duration_s(&self) -> f64 {
        self.end_s - self.start_s
    }
}
