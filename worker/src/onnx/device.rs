//! Which GPU a slot's ONNX Runtime session runs on.
//!
//! A slot's servable processes see only its devices, through the vendor's
//! variable (`CUDA_VISIBLE_DEVICES` for NVIDIA; see
//! `flotilla_protocol::placement`). An ONNX session runs inside the worker,
//! which sees every device its job was given, so the session is told its
//! device by number instead: the slot's first NVIDIA device, numbered as
//! the CUDA runtime in the worker numbers it. That is its position in the
//! worker's own `CUDA_VISIBLE_DEVICES` when the job set one, else the
//! device's own number.

use flotilla_protocol::placement::{CUDA_VISIBLE_DEVICES, SlotPlacement};

/// The CUDA device number a session of the slot placed as `placement`
/// runs on, in a worker whose own `CUDA_VISIBLE_DEVICES` is
/// `worker_visible`: none when the slot has no NVIDIA device; an error
/// saying why when the slot has one the worker cannot number.
pub fn cuda_device(
    placement: &SlotPlacement,
    worker_visible: Option<&str>,
) -> Result<Option<i32>, String> {
    let Some((_, devices)) = placement
        .env
        .iter()
        .find(|(k, _)| k == CUDA_VISIBLE_DEVICES)
    else {
        return Ok(None);
    };
    let Some(device) = devices.split(',').map(str::trim).find(|d| !d.is_empty()) else {
        return Ok(None);
    };
    match worker_visible.map(str::trim).filter(|v| !v.is_empty()) {
        Some(visible) => visible
            .split(',')
            .map(str::trim)
            .position(|d| d == device)
            .and_then(|i| i32::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "the slot's GPU {device} is not among the worker's ({CUDA_VISIBLE_DEVICES}={visible})"
                )
            }),
        None => device.parse::<i32>().map(Some).map_err(|_| {
            format!(
                "the slot's GPU `{device}` is not a device number, and the worker has no {CUDA_VISIBLE_DEVICES} to find it in"
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(env: &[(&str, &str)]) -> SlotPlacement {
        SlotPlacement {
            devices: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            cpus: None,
        }
    }

    #[test]
    fn a_slot_without_an_nvidia_device_runs_on_the_cpu() {
        assert_eq!(cuda_device(&slot(&[]), None), Ok(None));
        assert_eq!(
            cuda_device(&slot(&[("ROCR_VISIBLE_DEVICES", "1")]), None),
            Ok(None)
        );
        assert_eq!(
            cuda_device(&slot(&[(CUDA_VISIBLE_DEVICES, "")]), Some("0")),
            Ok(None)
        );
    }

    #[test]
    fn the_device_is_numbered_as_the_worker_sees_it() {
        // No job-wide list: the node's numbers are the CUDA runtime's.
        assert_eq!(
            cuda_device(&slot(&[(CUDA_VISIBLE_DEVICES, "3")]), None),
            Ok(Some(3))
        );
        // A slot of two devices runs its session on the first.
        assert_eq!(
            cuda_device(&slot(&[(CUDA_VISIBLE_DEVICES, "2,3")]), None),
            Ok(Some(2))
        );
        // The job gave the worker devices 2 and 3: device 3 is its second.
        assert_eq!(
            cuda_device(&slot(&[(CUDA_VISIBLE_DEVICES, "3")]), Some("2,3")),
            Ok(Some(1))
        );
        assert_eq!(
            cuda_device(
                &slot(&[(CUDA_VISIBLE_DEVICES, "GPU-5e1f")]),
                Some("GPU-aa, GPU-5e1f")
            ),
            Ok(Some(1))
        );
    }

    #[test]
    fn a_device_the_worker_cannot_number_is_an_error_naming_it() {
        let e = cuda_device(&slot(&[(CUDA_VISIBLE_DEVICES, "1")]), Some("2,3")).unwrap_err();
        assert!(
            e.contains("GPU 1") && e.contains("CUDA_VISIBLE_DEVICES=2,3"),
            "{e}"
        );
        let e = cuda_device(&slot(&[(CUDA_VISIBLE_DEVICES, "MIG-7b2c")]), None).unwrap_err();
        assert!(e.contains("`MIG-7b2c`"), "{e}");
    }
}
