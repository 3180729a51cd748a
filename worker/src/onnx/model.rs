//! One loaded ONNX model: its session and what its servable declares.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_protocol::Payload;
use flotilla_protocol::servable::{Runtime, ServableRecord, TypeSpec};
use flotilla_protocol::task::Outcome;
use ort::ep::{CUDA, ExecutionProvider};
use ort::session::{Session, builder::SessionBuilder};
use ort::value::{TensorRef, ValueType};

use super::library;
use super::tensor::{self, DType, Element, with_dtype};

/// Why a model cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No ONNX Runtime library on this node.
    #[error("{0}")]
    Library(String),
    /// The servable is not an ONNX servable, or its spec cannot be served.
    #[error("{0}")]
    Spec(String),
    /// ONNX Runtime refused the model file.
    #[error("the model file `{file}` cannot be loaded: {message}")]
    Model {
        /// The model file, as the spec names it.
        file: String,
        /// ONNX Runtime's reason.
        message: String,
    },
    /// The model does not take or give what the servable declares.
    #[error("the model does not match the servable's declaration: {0}")]
    Mismatch(String),
}

/// A loaded model with its session, ready for batches.
pub struct Model {
    session: Session,
    input: String,
    input_dtype: DType,
    input_dims: Vec<usize>,
    output: String,
    output_dtype: DType,
    /// One request's output dims (empty: a single number).
    output_dims: Vec<usize>,
    /// Where the session runs.
    device: Device,
}

/// Where a session runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// On the CPU execution provider (for the reason given, where a GPU
    /// was asked for).
    Cpu {
        /// Why not on the GPU asked for; none: none was.
        instead_of_gpu: Option<String>,
    },
    /// On CUDA device number N (as the worker numbers them).
    Cuda(i32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu { .. } => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("input", &self.input)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// `builder` with CUDA device `cuda` registered, if one is asked for and
/// the library can; otherwise unchanged, on the CPU, with the reason.
fn on_device(builder: SessionBuilder, cuda: Option<i32>) -> (SessionBuilder, Device) {
    let Some(n) = cuda else {
        return (
            builder,
            Device::Cpu {
                instead_of_gpu: None,
            },
        );
    };
    let cpu = |why: String| Device::Cpu {
        instead_of_gpu: Some(why),
    };
    match CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => {
            let why = "this ONNX Runtime library has no CUDA execution provider (the onnxruntime-gpu wheel's library has one)";
            return (builder, cpu(why.into()));
        }
        Err(e) => {
            return (
                builder,
                cpu(format!("cannot ask ONNX Runtime for its providers: {e}")),
            );
        }
    }
    let cuda = CUDA::default().with_device_id(n).build().error_on_failure();
    match builder.with_execution_providers([cuda]) {
        Ok(builder) => (builder, Device::Cuda(n)),
        Err(e) => {
            let why = format!("CUDA device {n} refused the session: {e}");
            (e.recover(), cpu(why))
        }
    }
}

/// Dims of a declared ndarray (checked non-negative at publication).
fn dims(shape: &[i64]) -> Result<Vec<usize>, LoadError> {
    shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| LoadError::Spec(format!("shape {shape:?} has a negative dimension")))
}

/// The model's tensor type, or why it is not one this runtime feeds.
fn tensor_of(kind: &str, name: &str, ty: &ValueType) -> Result<(DType, Vec<i64>), LoadError> {
    let ValueType::Tensor { ty, shape, .. } = ty else {
        return Err(LoadError::Mismatch(format!(
            "its {kind} `{name}` is not a tensor ({ty:?}); export the model with tensor {kind}s (for skl2onnx classifiers, options zipmap=False)"
        )));
    };
    let dtype = DType::of_tensor(*ty).ok_or_else(|| {
        LoadError::Mismatch(format!(
            "its {kind} `{name}` has element type {ty:?}, which the onnx runtime does not handle"
        ))
    })?;
    Ok((dtype, shape.to_vec()))
}

/// The model's dims after its batch axis agree with one request's `dims`.
fn check_dims(kind: &str, name: &str, model: &[i64], dims: &[usize]) -> Result<(), LoadError> {
    let Some((&batch, rest)) = model.split_first() else {
        return Err(LoadError::Mismatch(format!(
            "its {kind} `{name}` is a scalar, with no batch axis"
        )));
    };
    if batch > 1 {
        return Err(LoadError::Mismatch(format!(
            "its {kind} `{name}` has a fixed batch size {batch}: export it with a dynamic first (batch) axis"
        )));
    }
    let fits = rest.len() == dims.len()
        && rest
            .iter()
            .zip(dims)
            .all(|(&m, &d)| m < 0 || m as usize == d);
    let elements_fit = rest.iter().all(|&m| m >= 0)
        && rest.iter().product::<i64>() as usize == dims.iter().product::<usize>();
    if fits || (kind == "output" && elements_fit) {
        return Ok(());
    }
    Err(LoadError::Mismatch(format!(
        "its {kind} `{name}` has shape {model:?} (batch first) and the servable declares one request's {kind} as {dims:?}"
    )))
}

impl Model {
    /// Loads `record`'s model from `dir` (its verified files) into a
    /// session of `threads` threads, on CUDA device `cuda` if one is given
    /// and the library offers CUDA (else on the CPU, saying why), and
    /// checks it against the declared input and output.
    pub fn load(
        record: &ServableRecord,
        dir: &Path,
        threads: usize,
        cuda: Option<i32>,
    ) -> Result<Model, LoadError> {
        let Runtime::Onnx {
            model: file,
            input,
            output,
        } = &record.spec.runtime
        else {
            return Err(LoadError::Spec(format!(
                "{} is not an onnx servable",
                record.id()
            )));
        };
        let env = library::environment().map_err(LoadError::Library)?;
        let refused = |message: String| LoadError::Model {
            file: file.clone(),
            message,
        };
        let cpu_builder = || {
            Session::builder(env)
                .map_err(|e| refused(e.to_string()))?
                .with_intra_threads(threads)
                .map_err(|e| refused(e.to_string()))?
                .with_inter_threads(1)
                .map_err(|e| refused(e.to_string()))?
                // Threads that wait spin by default: on a node whose cores
                // the slots share with the worker and each other, they sleep.
                .with_config_entry("session.intra_op.allow_spinning", "0")
                .map_err(|e| refused(e.to_string()))
        };
        let path = dir.join(file);
        let (mut builder, mut device) = on_device(cpu_builder()?, cuda);
        let session = match builder.commit_from_file(&path) {
            Ok(session) => session,
            // The provider registered but the session did not start on
            // the device (its memory, a library it loads late): the CPU
            // still runs the model.
            Err(e) if matches!(device, Device::Cuda(_)) => {
                device = Device::Cpu {
                    instead_of_gpu: Some(format!("the session did not start on {device}: {e}")),
                };
                cpu_builder()?
                    .commit_from_file(&path)
                    .map_err(|e| refused(e.to_string()))?
            }
            Err(e) => return Err(refused(e.to_string())),
        };
        let input_names: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_owned())
            .collect();
        let output_names: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_owned())
            .collect();
        let input_name = match input {
            Some(name) => name.clone(),
            None if input_names.len() == 1 => input_names[0].clone(),
            None => {
                return Err(LoadError::Mismatch(format!(
                    "it has {} inputs ({}); name the one the requests feed as runtime.input",
                    input_names.len(),
                    input_names.join(", ")
                )));
            }
        };
        let output_name = match output {
            Some(name) => name.clone(),
            None => output_names
                .first()
                .cloned()
                .ok_or_else(|| LoadError::Mismatch("it has no output".into()))?,
        };
        let inlet = session
            .inputs()
            .iter()
            .find(|i| i.name() == input_name)
            .ok_or_else(|| {
                LoadError::Mismatch(format!(
                    "it has no input `{input_name}` (its inputs: {})",
                    input_names.join(", ")
                ))
            })?;
        let (input_dtype, model_in) = tensor_of("input", &input_name, inlet.dtype())?;
        let TypeSpec::Ndarray { dtype, shape, .. } = &record.spec.input else {
            return Err(LoadError::Spec("its input must be an ndarray".into()));
        };
        if DType::parse(dtype) != Some(input_dtype) {
            return Err(LoadError::Mismatch(format!(
                "its input `{input_name}` takes {input_dtype} and the servable declares {dtype}"
            )));
        }
        let input_dims = dims(shape)?;
        check_dims("input", &input_name, &model_in, &input_dims)?;
        let outlet = session
            .outputs()
            .iter()
            .find(|o| o.name() == output_name)
            .ok_or_else(|| {
                LoadError::Mismatch(format!(
                    "it has no output `{output_name}` (its outputs: {})",
                    output_names.join(", ")
                ))
            })?;
        let (output_dtype, model_out) = tensor_of("output", &output_name, outlet.dtype())?;
        let out_dims = match &record.spec.output {
            TypeSpec::Ndarray { dtype, shape, .. } => {
                if DType::parse(dtype) != Some(output_dtype) {
                    return Err(LoadError::Mismatch(format!(
                        "its output `{output_name}` gives {output_dtype} and the servable declares {dtype}"
                    )));
                }
                dims(shape)?
            }
            TypeSpec::Integer { .. } if !output_dtype.is_integer() => {
                return Err(LoadError::Mismatch(format!(
                    "its output `{output_name}` gives {output_dtype} and the servable declares an integer"
                )));
            }
            TypeSpec::Integer { .. } | TypeSpec::Number { .. } => Vec::new(),
            other => {
                return Err(LoadError::Spec(format!(
                    "its output must be an ndarray, a number or an integer, not {}",
                    other.kind()
                )));
            }
        };
        check_dims("output", &output_name, &model_out, &out_dims)?;
        Ok(Model {
            session,
            input: input_name,
            input_dtype,
            input_dims,
            output: output_name,
            output_dtype,
            output_dims: out_dims,
            device,
        })
    }

    /// Where the session runs.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs a batch: one outcome per input, in order, and where the time
    /// went. A request whose input does not fit fails alone; the error is
    /// the model's failing as a whole.
    pub fn run(&mut self, inputs: &[&[u8]]) -> Result<(Vec<Outcome>, RunTimes), String> {
        with_dtype!(self.input_dtype, T, self.run_typed::<T>(inputs))
    }

    fn run_typed<T: Element>(
        &mut self,
        inputs: &[&[u8]],
    ) -> Result<(Vec<Outcome>, RunTimes), String> {
        let mut times = RunTimes::default();
        let started = Instant::now();
        let per_input: usize = self.input_dims.iter().product();
        let mut stacked: Vec<T> = Vec::with_capacity(per_input * inputs.len());
        let mut outcomes: Vec<Option<Outcome>> = vec![None; inputs.len()];
        let mut fed = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            match tensor::decode_into(input, self.input_dtype, &self.input_dims, &mut stacked) {
                Ok(()) => fed.push(i),
                Err(message) => outcomes[i] = Some(Outcome::Error(message)),
            }
        }
        times.decode = started.elapsed();
        if !fed.is_empty() {
            let mut shape = Vec::with_capacity(1 + self.input_dims.len());
            shape.push(fed.len());
            shape.extend_from_slice(&self.input_dims);
            let tensor =
                TensorRef::from_array_view((shape, &stacked[..])).map_err(|e| e.to_string())?;
            let Model {
                session,
                input,
                output,
                output_dtype,
                output_dims,
                ..
            } = self;
            let called = Instant::now();
            let results = session
                .run(ort::inputs![input.as_str() => tensor])
                .map_err(|e| format!("the model failed: {e}"))?;
            times.model = called.elapsed();
            let splitting = Instant::now();
            let value = results
                .get(output.as_str())
                .ok_or_else(|| format!("the model gave no output `{output}`"))?;
            let replies = with_dtype!(*output_dtype, U, {
                let (_, values) = value
                    .try_extract_tensor::<U>()
                    .map_err(|e| format!("output `{output}`: {e}"))?;
                split(values, fed.len(), output_dims)?
            });
            for (i, reply) in fed.into_iter().zip(replies) {
                outcomes[i] = Some(Outcome::Output(Payload::from(reply)));
            }
            times.split = splitting.elapsed();
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Error("no output".into())))
            .collect();
        Ok((outcomes, times))
    }
}

/// Where one batch's time went in the worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunTimes {
    /// Decoding the requests into the stacked input.
    pub decode: Duration,
    /// The model call.
    pub model: Duration,
    /// Splitting and encoding the output per request.
    pub split: Duration,
}

/// The model's output for `n` requests, one reply each.
fn split<U: Element>(values: &[U], n: usize, dims: &[usize]) -> Result<Vec<Vec<u8>>, String> {
    let per: usize = dims.iter().product();
    if values.len() != per * n {
        return Err(format!(
            "the model gave {} output elements for {n} inputs; the servable declares {per} each (shape {dims:?})",
            values.len()
        ));
    }
    Ok(values
        .chunks_exact(per.max(1))
        .take(n)
        .map(|one| tensor::encode(one, dims))
        .collect())
}
