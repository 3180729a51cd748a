//! Finding and loading the ONNX Runtime library, once per worker.
//!
//! The library is the `libonnxruntime.so` a site provides: the one the
//! `onnxruntime` wheel on PyPI ships (in `onnxruntime/capi/`), a module's,
//! or a system package's. The worker looks for it in order at
//! `FLOTILLA_ONNXRUNTIME`, at `ORT_DYLIB_PATH` (the `ort` crate's own
//! variable) and else by the name `libonnxruntime.so` through the dynamic
//! loader's search path (`LD_LIBRARY_PATH`, the system's directories). A
//! site sets the variable in `[worker] init` (`export
//! FLOTILLA_ONNXRUNTIME=...`) or in the worker's environment.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The variable naming the ONNX Runtime library.
pub const LIBRARY_ENV: &str = "FLOTILLA_ONNXRUNTIME";

/// The `ort` crate's variable for the same.
const ORT_ENV: &str = "ORT_DYLIB_PATH";

/// The library's name for the dynamic loader when no variable names it.
const DEFAULT_NAME: &str = "libonnxruntime.so";

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Where the library is looked for, and which variable said so.
fn location() -> (PathBuf, &'static str) {
    for var in [LIBRARY_ENV, ORT_ENV] {
        if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return (PathBuf::from(path), var);
        }
    }
    (
        PathBuf::from(DEFAULT_NAME),
        "the dynamic loader's search path",
    )
}

/// The process's ONNX Runtime environment, the library loaded on first
/// use; the same error for every later caller if it cannot be.
pub fn environment() -> Result<&'static ort::environment::Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            let (path, from) = location();
            let loaded = ort::init_from(&path)
                .map_err(|e| e.to_string())
                .and_then(|builder| builder.with_name("flotilla-worker").build().map_err(|e| e.to_string()));
            match loaded {
                Ok(env) => {
                    tracing::info!(library = %path.display(), from, "onnx runtime loaded");
                    Ok(env)
                }
                Err(e) => Err(format!(
                    "the ONNX Runtime library cannot be loaded from {} (from {from}): {e}; install it on the node (`pip install onnxruntime` ships it as onnxruntime/capi/libonnxruntime.so.*) and set {LIBRARY_ENV} to its path",
                    path.display()
                )),
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}
