//! Choosing the burn backend at run time.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::ModelError;

/// A backend that dera can run on; `flex` is the default CPU backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// burn-flex on the CPU (default).
    #[default]
    Flex,
    /// burn-ndarray on the CPU (cargo feature `ndarray`).
    Ndarray,
    /// CUDA device 0 (cargo feature `cuda`).
    Cuda,
}

impl DeviceKind {
    /// All kinds, for help texts.
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Flex, DeviceKind::Ndarray, DeviceKind::Cuda];

    /// Creates the burn device, or explains which cargo feature is missing.
    pub fn device(self) -> Result<Device, ModelError> {
        match self {
            DeviceKind::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            // Deprecated upstream in favour of flex; kept because users ask for it by name.
            #[allow(deprecated)]
            DeviceKind::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            other => Err(ModelError::Device {
                name: other.to_string(),
                reason: format!("dera was built without the `{other}` cargo feature"),
            }),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Flex => "flex",
            DeviceKind::Ndarray => "ndarray",
            DeviceKind::Cuda => "cuda",
        })
    }
}

impl FromStr for DeviceKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flex" | "cpu" => Ok(DeviceKind::Flex),
            "ndarray" => Ok(DeviceKind::Ndarray),
            "cuda" => Ok(DeviceKind::Cuda),
            _ => Err(ModelError::Device {
                name: s.to_string(),
                reason: "expected one of flex, ndarray, cuda".into(),
            }),
        }
    }
}
