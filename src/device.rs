//! Device selection: `auto`, `cpu`, `cuda`, `cuda:N`.

use candle_core::Device;

pub use crate::spec::DeviceChoice;

/// Opens the chosen device. `auto` takes `cuda:0` when this build has CUDA and a GPU answers,
/// else the CPU (saying so once); asking for CUDA explicitly without it is an error.
pub fn open(choice: DeviceChoice) -> anyhow::Result<(Device, Option<String>)> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, None)),
        DeviceChoice::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!(
                    "device cuda:{n} requested, but this ablate was built without CUDA: rebuild with `cargo build --release --features cuda` (or `make exp CUDA=1`)"
                );
            }
            Ok((Device::new_cuda(n).map_err(|e| anyhow::anyhow!("cannot open cuda:{n}: {e}"))?, None))
        }
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available()
                && let Ok(d) = Device::new_cuda(0)
            {
                return Ok((d, None));
            }
            Ok((Device::Cpu, Some("device auto: no CUDA GPU available to this build, training on the CPU".into())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = open(DeviceChoice::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
        assert_eq!(open(DeviceChoice::Auto).unwrap().0.location(), Device::Cpu.location());
    }
}
