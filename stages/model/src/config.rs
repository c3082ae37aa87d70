//! Model settings: the released LocVTP values (`configs/c3d-full.toml`) and
//! smaller widths for demos and tests, read from TOML.

use serde::{Deserialize, Serialize};

/// Initialisation of C3D's convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvInit {
    /// PyTorch's default (kaiming-uniform, a = sqrt 5), as the released code
    /// trains: after eight such layers the clip signal is almost gone
    /// (pool5 varies across inputs by ~1e-4 of its mean), which a long
    /// training run overcomes and a minutes-long demo does not.
    #[default]
    Pytorch,
    /// He-normal with zero biases: keeps the signal through the ReLU stack;
    /// for short runs (the CPU demo).
    Kaiming,
}

/// C3D widths. The released network uses `[64, 128, 256, 512, 512]` and a
/// 4096-d fc6; tests and the CPU demo shrink both to run in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C3dConfig {
    /// Output channels of conv1, conv2, conv3{a,b}, conv4{a,b}, conv5{a,b}.
    pub channels: [i64; 5],
    /// Width of fc6 (the clip feature) and fc7.
    pub fc_dim: i64,
    /// Width of fc8 (the Sports-1M classifier, kept only for checkpoint
    /// compatibility).
    pub num_classes: i64,
    pub conv_init: ConvInit,
}

impl Default for C3dConfig {
    fn default() -> Self {
        C3dConfig { channels: [64, 128, 256, 512, 512], fc_dim: 4096, num_classes: 487, conv_init: ConvInit::Pytorch }
    }
}

/// Everything that decides tensor shapes in a LocVTP checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub c3d: C3dConfig,
    /// D, the joint embedding size.
    pub projection_dim: i64,
    /// Dropout inside the projection heads.
    pub dropout: f64,
    /// Hidden size of the text encoder feeding the text projection (768 for
    /// DistilBERT-base, 384 for all-MiniLM-L6-v2).
    pub text_dim: i64,
    /// T, segments per training sample (sizes the splice predictor); 5 in
    /// the released model.
    pub num_segments: i64,
    /// F, frames per segment / extraction clip.
    pub frames_per_segment: i64,
    /// Side of the square input frames.
    pub frame_size: i64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            c3d: C3dConfig::default(),
            projection_dim: 256,
            dropout: 0.1,
            text_dim: 768,
            num_segments: 5,
            frames_per_segment: 16,
            frame_size: 112,
        }
    }
}

impl ModelConfig {
    /// Reads a model configuration from a TOML file; unknown keys are errors.
    pub fn from_toml_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read model config: {e}", path.display()))?;
        Self::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn from_toml_str(text: &str) -> anyhow::Result<Self> {
        let wrapper: ModelFile = toml::from_str(text)?;
        wrapper.model.check()?;
        Ok(wrapper.model)
    }

    /// Values no network can be built with, said when the file is read
    /// instead of as a libtorch error at the first batch. Clip shapes are
    /// left to the model: too few frames for C3D's poolings fail its first
    /// batch, and that failure names the stage, the batch and libtorch's
    /// reason.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let widths = [
            ("c3d.channels", self.c3d.channels.iter().copied().min().unwrap_or(0)),
            ("c3d.fc_dim", self.c3d.fc_dim),
            ("c3d.num_classes", self.c3d.num_classes),
            ("projection_dim", self.projection_dim),
            ("text_dim", self.text_dim),
            ("num_segments", self.num_segments),
        ];
        for (key, value) in widths {
            if value < 1 {
                problems.push(format!("model.{key}: {value} is not a size (at least 1)"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            problems.push(format!("model.dropout = {}: a probability below 1", self.dropout));
        }
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        Ok(())
    }

    /// Size of C3D's flattened pool5 volume: conv5 channels x 1 x 4 x 4 for
    /// a 16x112x112 clip.
    pub fn pool5_dim(&self) -> i64 {
        // pool1 keeps time; pool2..pool4 halve time and space; pool5 halves
        // again with one pixel of spatial padding.
        let t = (self.frames_per_segment / 16).max(1);
        let s = (self.frame_size / 16) / 2 + 1;
        self.c3d.channels[4] * t * s * s
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    model: ModelConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_file_with_impossible_values_is_refused_naming_them() {
        let text = "[model]\nprojection_dim = 0\ndropout = 1.5\n[model.c3d]\nchannels = [2, 4, 0, 8, 8]\n";
        let e = ModelConfig::from_toml_str(text).expect_err("refused").to_string();
        for part in ["c3d.channels: 0", "projection_dim: 0", "dropout = 1.5"] {
            assert!(e.contains(part), "{part} in: {e}");
        }
        for file in ["c3d-full", "c3d-small", "c3d-tiny"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../configs/{file}.toml"));
            ModelConfig::from_toml_file(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
