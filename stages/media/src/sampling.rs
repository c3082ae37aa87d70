//! Which frames make a clip: dense 16-frame clips for feature extraction and
//! TSN segment sampling for training (locvtp-method.md section 1).

use rand::Rng;
use std::collections::VecDeque;

/// What to do with clips that run past the last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tail {
    /// Repeat the last decoded frame: `ceil(n / stride)` clips.
    #[default]
    Pad,
    /// Only clips whose frames all exist.
    Drop,
}

/// Clips a video of `frames` frames yields.
pub fn dense_clip_count(frames: u64, clip_frames: usize, stride: usize, tail: Tail) -> u64 {
    let (f, s) = (clip_frames as u64, stride.max(1) as u64);
    match tail {
        Tail::Pad => frames.div_ceil(s),
        Tail::Drop if frames >= f => (frames - f) / s + 1,
        Tail::Drop => 0,
    }
}

/// Cuts a stream of frames into dense clips as the frames arrive, holding no
/// more frames than one clip (and the stride) needs.
#[derive(Debug)]
pub struct DenseClipper {
    clip_frames: usize,
    stride: usize,
    tail: Tail,
    frame_bytes: usize,
    /// Frames from index `buffer_start` on, oldest first.
    buffer: VecDeque<Vec<u8>>,
    buffer_start: u64,
    seen: u64,
    next_clip: u64,
}

/// One clip: `clip_frames` frames packed `[F, H, W, 3]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseClip {
    pub index: u64,
    pub first_frame: u64,
    /// Frames repeated at the end to complete the clip.
    pub padded_frames: usize,
    pub pixels: Vec<u8>,
}

impl DenseClipper {
    pub fn new(clip_frames: usize, stride: usize, tail: Tail, frame_bytes: usize) -> Self {
        assert!(clip_frames > 0 && stride > 0, "clip_frames and stride must be positive");
        DenseClipper {
            clip_frames,
            stride,
            tail,
            frame_bytes,
            buffer: VecDeque::new(),
            buffer_start: 0,
            seen: 0,
            next_clip: 0,
        }
    }

    fn clip_start(&self, k: u64) -> u64 {
        k * self.stride as u64
    }

    /// Feeds the next frame; returns the clips it completes.
    pub fn push(&mut self, frame: &[u8]) -> Vec<DenseClip> {
        debug_assert_eq!(frame.len(), self.frame_bytes);
        let index = self.seen;
        self.seen += 1;
        // Frames that fall in the gap between clips (stride > clip_frames)
        // are never needed.
        if index >= self.clip_start(self.next_clip) {
            if self.buffer.is_empty() {
                self.buffer_start = index;
            }
            self.buffer.push_back(frame.to_vec());
        }
        let mut out = Vec::new();
        while self.seen >= self.clip_start(self.next_clip) + self.clip_frames as u64 {
            out.push(self.emit(self.next_clip));
            self.next_clip += 1;
            self.discard_before(self.clip_start(self.next_clip));
        }
        out
    }

    /// Ends the video: pads (or drops) the clips that started before its end.
    pub fn finish(&mut self) -> Vec<DenseClip> {
        let mut out = Vec::new();
        if self.tail == Tail::Pad {
            while self.clip_start(self.next_clip) < self.seen {
                out.push(self.emit(self.next_clip));
                self.next_clip += 1;
                self.discard_before(self.clip_start(self.next_clip));
            }
        }
        self.buffer.clear();
        out
    }

    pub fn frames_seen(&self) -> u64 {
        self.seen
    }

    fn discard_before(&mut self, index: u64) {
        // A padded tail clip starts at a frame already seen, which is
        // therefore still buffered: nothing before `index` is needed again.
        while self.buffer_start < index && !self.buffer.is_empty() {
            self.buffer.pop_front();
            self.buffer_start += 1;
        }
    }

    fn emit(&self, k: u64) -> DenseClip {
        let start = self.clip_start(k);
        let mut pixels = Vec::with_capacity(self.clip_frames * self.frame_bytes);
        let mut padded = 0;
        for i in 0..self.clip_frames as u64 {
            let want = start + i;
            let have = if want < self.seen { want } else { self.seen - 1 };
            if want >= self.seen {
                padded += 1;
            }
            let offset = (have.max(self.buffer_start) - self.buffer_start) as usize;
            pixels.extend_from_slice(&self.buffer[offset.min(self.buffer.len() - 1)]);
        }
        DenseClip { index: k, first_frame: start, padded_frames: padded, pixels }
    }
}

/// TSN offsets of `t` segments of `f` frames in a span of `num_frames`
/// frames (locvtp-method.md section 1).
pub fn segment_offsets(num_frames: i64, t: usize, f: usize, rng: &mut impl Rng) -> Vec<i64> {
    let seg = (num_frames - f as i64 + 1).div_euclid(t as i64);
    if seg > 0 {
        (0..t as i64).map(|i| i * seg + rng.random_range(0..seg)).collect()
    } else {
        let mut v: Vec<i64> = (0..t).map(|_| rng.random_range(0..num_frames.max(1))).collect();
        v.sort_unstable();
        v
    }
}

/// Absolute frame indices of a training sample: `t * f` frames, segment `i`
/// being `f` consecutive frames from `start_frame + offset[i]`, clamped to
/// `end_frame`.
pub fn segment_frame_indices(start_frame: i64, end_frame: i64, t: usize, f: usize, rng: &mut impl Rng) -> Vec<i64> {
    let num_frames = end_frame - start_frame + 1;
    let offsets = segment_offsets(num_frames, t, f, rng);
    let mut idx = Vec::with_capacity(t * f);
    for off in offsets {
        for j in 0..f as i64 {
            idx.push((start_frame + off + j).min(end_frame));
        }
    }
    idx.truncate(t * f);
    while idx.len() < t * f {
        idx.push(*idx.last().unwrap_or(&start_frame));
    }
    idx
}

/// Frame range of a caption clip as the released code computes it.
pub fn caption_frame_range(start_s: f64, end_s: f64, fps: f64) -> (i64, i64) {
    ((start_s * fps) as i64, (end_s * fps) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn frames(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i; 2]).collect()
    }

    fn run(n: u8, f: usize, s: usize, tail: Tail) -> Vec<DenseClip> {
        let mut c = DenseClipper::new(f, s, tail, 2);
        let mut out = Vec::new();
        for fr in frames(n) {
            out.extend(c.push(&fr));
        }
        out.extend(c.finish());
        out
    }

    fn first_bytes(c: &DenseClip) -> Vec<u8> {
        c.pixels.chunks(2).map(|p| p[0]).collect()
    }

    #[test]
    fn dense_clips_pad_the_tail_with_the_last_frame() {
        let clips = run(10, 4, 4, Tail::Pad);
        assert_eq!(clips.len(), 3);
        assert_eq!(clips.len() as u64, dense_clip_count(10, 4, 4, Tail::Pad));
        assert_eq!(first_bytes(&clips[0]), vec![0, 1, 2, 3]);
        assert_eq!(first_bytes(&clips[2]), vec![8, 9, 9, 9]);
        assert_eq!(clips[2].padded_frames, 2);
    }

    #[test]
    fn overlapping_and_gapped_strides() {
        let clips = run(7, 4, 2, Tail::Pad);
        assert_eq!(clips.len(), 4);
        assert_eq!(first_bytes(&clips[1]), vec![2, 3, 4, 5]);
        assert_eq!(first_bytes(&clips[3]), vec![6, 6, 6, 6]);
        let gapped = run(11, 2, 5, Tail::Pad);
        assert_eq!(gapped.iter().map(first_bytes).collect::<Vec<_>>(), vec![vec![0, 1], vec![5, 6], vec![10, 10]]);
    }

    #[test]
    fn drop_keeps_only_whole_clips() {
        let clips = run(10, 4, 4, Tail::Drop);
        assert_eq!(clips.len(), 2);
        assert_eq!(dense_clip_count(10, 4, 4, Tail::Drop), 2);
        assert_eq!(dense_clip_count(3, 4, 4, Tail::Drop), 0);
    }

    #[test]
    fn fewer_frames_than_a_clip_give_one_padded_clip() {
        let clips = run(3, 16, 16, Tail::Pad);
        assert_eq!(clips.len(), 1);
        assert_eq!(first_bytes(&clips[0])[..4], [0, 1, 2, 2]);
    }

    #[test]
    fn segment_offsets_stay_in_their_segment() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let off = segment_offsets(100, 5, 16, &mut rng);
            let seg = (100 - 16 + 1) / 5;
            for (i, o) in off.iter().enumerate() {
                assert!(*o >= i as i64 * seg && *o < (i as i64 + 1) * seg, "{off:?}");
            }
        }
    }

    #[test]
    fn short_spans_draw_sorted_offsets() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let off = segment_offsets(20, 5, 16, &mut rng);
        assert!(off.windows(2).all(|w| w[0] <= w[1]));
        assert!(off.iter().all(|&o| (0..20).contains(&o)));
    }

    #[test]
    fn sample_indices_are_clamped_and_complete() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let idx = segment_frame_indices(50, 69, 4, 16, &mut rng);
        assert_eq!(idx.len(), 64);
        assert!(idx.iter().all(|&i| (50..=69).contains(&i)));
        let mut again = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(idx, segment_frame_indices(50, 69, 4, 16, &mut again));
    }

    #[test]
    fn caption_frame_range_truncates_like_int() {
        assert_eq!(caption_frame_range(1.99, 4.01, 10.0), (19, 40));
    }
}
