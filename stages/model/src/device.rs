//! Where a model runs, as written in a graph file: `auto`, `cpu`, `cuda`
//! or `cuda:N`. Parsed once, into this type; every worker then resolves it
//! to a libtorch device with [`Device::for_worker`].

use std::fmt;

/// A device choice from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// A GPU when libtorch sees one, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// `cuda` (index `None`: spread over the machine's GPUs) or `cuda:N`.
    Cuda(Option<usize>),
}

impl schemars::JsonSchema for Device {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Device".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(auto|cpu|cuda|cuda:[0-9]+)$",
            "description": "auto | cpu | cuda | cuda:N"
        })
    }
}

impl TryFrom<String> for Device {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(None)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(|n| Device::Cuda(Some(n)))
                .ok_or_else(|| format!("expected auto, cpu, cuda or cuda:N, got `{other}`")),
        }
    }
}

impl From<Device> for String {
    fn from(device: Device) -> String {
        device.to_string()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(None) => f.write_str("cuda"),
            Device::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl Device {
    /// The libtorch device for the `slot`-th worker of this machine: with
    /// `auto` or `cuda`, worker `i` of a machine uses GPU `i mod count`, so
    /// that the workers of an 8-GPU node use all eight; `cuda:N` pins every
    /// worker to GPU `N`.
    pub fn for_worker(self, slot: usize) -> tch::Device {
        let gpus = tch::Cuda::device_count().max(0) as usize;
        self.resolve(slot, gpus)
    }

    /// [`Device::for_worker`] for a machine with `gpus` GPUs.
    pub fn resolve(self, slot: usize, gpus: usize) -> tch::Device {
        match self {
            Device::Cpu => tch::Device::Cpu,
            Device::Auto if gpus == 0 => tch::Device::Cpu,
            Device::Auto | Device::Cuda(None) => tch::Device::Cuda(slot % gpus.max(1)),
            Device::Cuda(Some(n)) => tch::Device::Cuda(n),
        }
    }

    /// Checks that the device exists on this machine.
    pub fn check_available(self) -> anyhow::Result<()> {
        let gpus = tch::Cuda::device_count().max(0) as usize;
        match self {
            Device::Cuda(_) if gpus == 0 => {
                anyhow::bail!("device `{self}`: libtorch sees no CUDA device on this machine")
            }
            Device::Cuda(Some(n)) if n >= gpus => {
                anyhow::bail!("device `{self}`: this machine has {gpus} CUDA device(s)")
            }
            _ => Ok(()),
        }
    }
}

/// Which activation becomes a clip's feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The video projection head's output: the joint video-text space
    /// (D = 256 in the released model).
    #[default]
    Projection,
    /// C3D's fc6 activations (4096-d in the released model).
    Fc6,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Layer::Projection => "projection",
            Layer::Fc6 => "fc6",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for text in ["auto", "cpu", "cuda", "cuda:3"] {
            let d = Device::try_from(text.to_string()).unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert!(Device::try_from("gpu".to_string()).is_err());
        assert!(Device::try_from("cuda:x".to_string()).is_err());
    }

    #[test]
    fn workers_spread_over_the_gpus_of_their_machine() {
        assert_eq!(Device::Auto.resolve(5, 0), tch::Device::Cpu);
        assert_eq!(Device::Auto.resolve(5, 8), tch::Device::Cuda(5));
        assert_eq!(Device::Cuda(None).resolve(9, 8), tch::Device::Cuda(1));
        assert_eq!(Device::Cuda(Some(2)).resolve(9, 8), tch::Device::Cuda(2));
        assert_eq!(Device::Cpu.resolve(3, 8), tch::Device::Cpu);
    }
}
