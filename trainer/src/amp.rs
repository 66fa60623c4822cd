//! Mixed precision of the training step (setting `amp`): libtorch's autocast for the
//! device the network runs on, in bfloat16 or float16.
//!
//! Under autocast the convolutions (and the other ops on libtorch's lower-precision
//! list) run in the reduced type while the parameters, their gradients, Adam's
//! moments, the checkpoints and the exports stay float32; the losses are computed on
//! float32 logits. bfloat16 has float32's exponent range and needs no loss scaling;
//! float16 does (`optim::Adam::loss_scale`, as `torch.amp.GradScaler`) and runs on
//! CUDA only.
//!
//! tch 0.24's own `tch::autocast` turns on CUDA's autocast in its default float16
//! only, so the device and type are set here through libtorch's
//! `at::autocast::{set_autocast_enabled, set_autocast_dtype}` (the functions behind
//! `torch.autocast(device_type, dtype)`), declared by their C++ symbol names. Both
//! take the one-byte enums `c10::DeviceType` and `c10::ScalarType`; the test
//! `autocast_runs_convolutions_in_the_reduced_type` checks the values below through
//! the kinds libtorch actually produces.

use tch::{Device, Kind};

/// The precision of the training step's forward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Amp {
    /// float32 throughout.
    #[default]
    Off,
    /// Autocast to bfloat16 (CPU and CUDA), no loss scaling.
    Bf16,
    /// Autocast to float16 with dynamic loss scaling (CUDA only).
    Fp16,
}

impl Amp {
    /// The reduced type autocast runs in (`None`: off).
    pub fn kind(self) -> Option<Kind> {
        match self {
            Amp::Off => None,
            Amp::Bf16 => Some(Kind::BFloat16),
            Amp::Fp16 => Some(Kind::Half),
        }
    }

    /// Whether the loss is scaled (float16's narrow range).
    pub fn scales_loss(self) -> bool {
        self == Amp::Fp16
    }

    /// Checks that `device` supports this precision.
    pub fn check_device(self, device: Device) -> anyhow::Result<()> {
        if self == Amp::Fp16 && !device.is_cuda() {
            anyhow::bail!(
                "amp = \"fp16\" needs a CUDA device (running on {device:?}); \
                 amp = \"bf16\" also runs on the CPU"
            );
        }
        Ok(())
    }
}

/// `c10::DeviceType` values.
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
/// `c10::ScalarType` values.
const SCALAR_HALF: i8 = 5;
const SCALAR_BFLOAT16: i8 = 15;

unsafe extern "C" {
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device: i8) -> bool;
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_get_autocast_dtype(device: i8) -> i8;
}

/// Autocast on for one device while alive; the previous state is restored on drop
/// (also when the closure panics).
struct Guard {
    device: i8,
    was_enabled: bool,
    was_dtype: i8,
}

impl Guard {
    fn new(device: Device, kind: Kind) -> Self {
        let device = if device.is_cuda() {
            DEVICE_CUDA
        } else {
            DEVICE_CPU
        };
        let dtype = match kind {
            Kind::Half => SCALAR_HALF,
            _ => SCALAR_BFLOAT16,
        };
        // SAFETY: plain setters/getters of libtorch's thread-local autocast state,
        // called with valid enum values.
        unsafe {
            let guard = Self {
                device,
                was_enabled: at_is_autocast_enabled(device),
                was_dtype: at_get_autocast_dtype(device),
            };
            at_set_autocast_dtype(device, dtype);
            at_set_autocast_enabled(device, true);
            torch_sys::at_autocast_increment_nesting();
            guard
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: as in `Guard::new`; the cache of casted weights is cleared when the
        // outermost autocast region ends, as `torch.autocast.__exit__` does.
        unsafe {
            if torch_sys::at_autocast_decrement_nesting() == 0 {
                torch_sys::at_autocast_clear_cache();
            }
            at_set_autocast_enabled(self.device, self.was_enabled);
            at_set_autocast_dtype(self.device, self.was_dtype);
        }
    }
}

/// Runs `f` under autocast for `device` in `amp`'s type (`Amp::Off`: as is).
pub fn autocast<T>(amp: Amp, device: Device, f: impl FnOnce() -> T) -> T {
    match amp.kind() {
        None => f(),
        Some(kind) => {
            let _guard = Guard::new(device, kind);
            f()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    fn conv(x: &Tensor, w: &Tensor) -> Tensor {
        x.conv2d(w, None::<&Tensor>, [1, 1], [0, 0], [1, 1], 1)
    }

    #[test]
    fn autocast_runs_convolutions_in_the_reduced_type() {
        let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        assert_eq!(conv(&x, &w).kind(), Kind::Float);
        let y = autocast(Amp::Bf16, Device::Cpu, || conv(&x, &w));
        assert_eq!(y.kind(), Kind::BFloat16);
        // The same numbers as casting by hand (an independent computation).
        let by_hand = conv(&x.to_kind(Kind::BFloat16), &w.to_kind(Kind::BFloat16));
        assert_eq!(y.to_kind(Kind::Float), by_hand.to_kind(Kind::Float));
        // Off, and after the region: float32 again.
        assert_eq!(
            autocast(Amp::Off, Device::Cpu, || conv(&x, &w)).kind(),
            Kind::Float
        );
        assert_eq!(conv(&x, &w).kind(), Kind::Float);
        // SAFETY: a getter of the thread-local state.
        unsafe {
            assert!(!at_is_autocast_enabled(DEVICE_CPU));
            assert_eq!(at_get_autocast_dtype(DEVICE_CPU), SCALAR_BFLOAT16);
        }
    }

    #[test]
    fn nested_regions_restore_the_outer_state() {
        let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let (inner, outer) = autocast(Amp::Bf16, Device::Cpu, || {
            let inner = autocast(Amp::Bf16, Device::Cpu, || conv(&x, &w).kind());
            (inner, conv(&x, &w).kind())
        });
        assert_eq!((inner, outer), (Kind::BFloat16, Kind::BFloat16));
        assert_eq!(conv(&x, &w).kind(), Kind::Float);
    }

    #[test]
    fn gradients_of_float32_parameters_stay_float32() {
        let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let loss = autocast(Amp::Bf16, Device::Cpu, || {
            conv(&x, &w).to_kind(Kind::Float).sum(Kind::Float)
        });
        loss.backward();
        assert_eq!(w.kind(), Kind::Float);
        assert_eq!(w.grad().kind(), Kind::Float);
    }

    #[test]
    fn fp16_needs_cuda() {
        assert!(Amp::Bf16.check_device(Device::Cpu).is_ok());
        let e = Amp::Fp16.check_device(Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("CUDA"), "{e}");
        assert!(Amp::Fp16.scales_loss() && !Amp::Bf16.scales_loss());
    }
}
