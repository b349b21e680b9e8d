//! ONNX Runtime, loaded at run time, and the graphs run on it.
//!
//! In: where `libonnxruntime.so` is (configured path, then the
//! `BOLDSTREAM_ORT_DYLIB` and `ORT_DYLIB_PATH` environment variables, then
//! the documented default locations) and which execution provider to use.
//! Out: a [`Runtime`] that loads [`Graph`]s, each checked against the
//! manifest's tensor specs, and runs them on float32/int64 slices, timing
//! ONNX Runtime's own execution separately from everything around it.
//!
//! The library comes from PyPI's `onnxruntime` (CPU) or `onnxruntime-gpu`
//! (CUDA, TensorRT) wheel: nothing is downloaded at build or run time.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{TensorElementType, TensorRef, ValueType};
use serde::Deserialize;

use super::error::ModelError;
use super::error::RuntimeError;
use super::tensor::{Dtype, TensorSpec, shape_str};

use super::{ORT_MINOR, ORT_PYPI};

/// Which execution provider runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when this ONNX Runtime and machine have it, else CPU (announced).
    #[default]
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA (falls back to CPU, announced, unless `require_gpu`).
    Cuda,
    /// TensorRT, then CUDA, then CPU (announced).
    Tensorrt,
}

/// `[decode]` settings that concern ONNX Runtime.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so*` (or of a folder holding it).
    pub onnxruntime: Option<PathBuf>,
    /// Execution provider.
    pub device: DeviceChoice,
    /// GPU index.
    pub gpu: i32,
    /// Refuse to run on CPU when a GPU provider was asked for.
    pub require_gpu: bool,
    /// Intra-op threads per graph (0: ONNX Runtime's default).
    pub threads: usize,
    /// TensorRT provider options.
    pub tensorrt: TensorRtOptions,
    /// CUDA provider options.
    pub cuda: CudaOptions,
}

/// `[decode.tensorrt]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TensorRtOptions {
    /// Build fp16 engines (the MindEye2 UNet is trained for fp16; fp32
    /// engines are about twice as slow).
    pub fp16: bool,
    /// Where built engines are kept: without a cache every start rebuilds
    /// the UNet's engine, which takes minutes. Default
    /// `$XDG_CACHE_HOME/boldstream/tensorrt` (else `~/.cache/...`).
    pub engine_cache: Option<PathBuf>,
    /// Keep TensorRT's timing cache beside the engines (faster rebuilds
    /// after a driver or model change).
    pub timing_cache: bool,
    /// Workspace TensorRT may use while building, GB (default: its own).
    pub max_workspace_gb: Option<f64>,
}

impl Default for TensorRtOptions {
    fn default() -> Self {
        TensorRtOptions {
            fp16: true,
            engine_cache: None,
            timing_cache: true,
            max_workspace_gb: None,
        }
    }
}

impl TensorRtOptions {
    /// The engine cache folder in use.
    pub fn cache_dir(&self) -> PathBuf {
        self.engine_cache.clone().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir);
            base.join("boldstream").join("tensorrt")
        })
    }
}

/// cuDNN convolution algorithm search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvSearch {
    /// Benchmark every algorithm once per shape (ONNX Runtime's default).
    #[default]
    Exhaustive,
    /// cuDNN's heuristics (faster first call).
    Heuristic,
    /// The default algorithm.
    Default,
}

/// `[decode.cuda]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CudaOptions {
    /// Cap on the CUDA arena, GB (default: no cap).
    pub memory_limit_gb: Option<f64>,
    /// cuDNN convolution search.
    pub conv_algorithm_search: ConvSearch,
    /// TF32 matmuls on Ampere and later (default: ONNX Runtime's).
    pub tf32: Option<bool>,
    /// Capture CUDA graphs (needs static shapes and I/O on the device).
    pub cuda_graph: bool,
}

fn gigabytes(gb: f64) -> usize {
    (gb.max(0.0) * 1e9) as usize
}

/// The environment variable that names the library (ours first, then ort's).
pub const ENV_VARS: [&str; 2] = ["BOLDSTREAM_ORT_DYLIB", "ORT_DYLIB_PATH"];

/// Where a library file is in a folder: `libonnxruntime.so`, else the
/// highest-versioned `libonnxruntime.so.1.x.y` (the wheel ships only that).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so.") && p.is_file())
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

/// `site-packages/onnxruntime/capi` folders of a virtual environment.
fn venv_capi(venv: &Path) -> Vec<PathBuf> {
    let lib = venv.join("lib");
    let Ok(entries) = std::fs::read_dir(&lib) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .map(|p| p.join("site-packages/onnxruntime/capi"))
        .collect();
    out.sort();
    out
}

/// The default places, in order: beside the executable (and its `../lib`),
/// `$VIRTUAL_ENV`, a `.venv` in the current folder or in up to three
/// folders above the executable (a source checkout's `target/release`),
/// then `/opt/boldstream/lib`, `/usr/local/lib`, `/usr/lib`.
pub fn default_locations() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(d) = &exe_dir {
        dirs.push(d.clone());
        dirs.push(d.join("../lib"));
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        dirs.extend(venv_capi(Path::new(&v)));
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.extend(venv_capi(&cwd.join(".venv")));
    }
    if let Some(d) = &exe_dir {
        let mut up = d.clone();
        for _ in 0..3 {
            if !up.pop() {
                break;
            }
            dirs.extend(venv_capi(&up.join(".venv")));
        }
    }
    for d in ["/opt/boldstream/lib", "/usr/local/lib", "/usr/lib"] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// Find the library: `configured` (a file or folder), then the environment
/// variables, then [`default_locations`].
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let mut tried = Vec::new();
    let mut check = |p: &Path, origin: &str| -> Option<PathBuf> {
        if p.is_file() {
            return Some(p.to_path_buf());
        }
        if p.is_dir() {
            if let Some(f) = library_in(p) {
                return Some(f);
            }
            tried.push(format!(
                "{} ({origin}: no libonnxruntime.so* in it)",
                p.display()
            ));
        } else {
            tried.push(format!("{} ({origin}: does not exist)", p.display()));
        }
        None
    };
    if let Some(p) = configured {
        // A configured path that is wrong is an error, not a cue to look
        // elsewhere: the operator meant that library.
        return check(p, "configured").ok_or_else(|| RuntimeError::NotFound {
            tried: tried.clone(),
        });
    }
    for var in ENV_VARS {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty())
            && let Some(f) = check(Path::new(&v), var)
        {
            return Ok(f);
        }
    }
    for d in default_locations() {
        if d.is_dir()
            && let Some(f) = library_in(&d)
        {
            return Ok(f);
        }
    }
    tried.push(
        "beside the executable, $VIRTUAL_ENV, .venv (here and above the executable), \
         /opt/boldstream/lib, /usr/local/lib, /usr/lib"
            .to_string(),
    );
    Err(RuntimeError::NotFound { tried })
}

struct Loaded {
    env: ort::environment::Environment,
    path: PathBuf,
    version: String,
    cuda: bool,
    tensorrt: bool,
}

/// ONNX Runtime allows one environment per process; every [`Runtime`]
/// shares it. Only a successful load is kept, so a wrong path tried first
/// does not spoil a right one tried after.
static LOADED: OnceLock<Loaded> = OnceLock::new();
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The release a library file is, from its name (`libonnxruntime.so.1.31.1`,
/// or what a plain `libonnxruntime.so` links to). The C API gives only the
/// API level, which ort checks on load.
fn version_from_name(path: &Path) -> String {
    let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    real.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libonnxruntime.so."))
        .map(str::to_string)
        .unwrap_or_else(|| format!("1.{ORT_MINOR} API or newer"))
}

fn load(path: &Path) -> Result<Loaded, RuntimeError> {
    let load_err = |message: String| RuntimeError::Load {
        path: path.to_path_buf(),
        message,
    };
    let builder = ort::init_from(path).map_err(|e| {
        // libloading keeps dlerror()'s text (bad ELF header, a missing
        // dependency…) as the error's source; that is the useful part.
        let mut msg = e.to_string();
        if let ort::LoadDynamicError::Dlopen { error, .. } = &e {
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(error);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
        }
        load_err(msg)
    })?;
    let env = builder
        .with_name("boldstream")
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    let cuda = ep::CUDA::is_available().unwrap_or(false);
    let tensorrt = ep::TensorRT::is_available().unwrap_or(false);
    Ok(Loaded {
        env,
        path: path.to_path_buf(),
        version: version_from_name(path),
        cuda,
        tensorrt,
    })
}

fn loaded(path: &Path) -> Result<&'static Loaded, RuntimeError> {
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    let l = load(path)?;
    Ok(LOADED.get_or_init(|| l))
}

/// The provider a graph actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// CPU.
    Cpu,
    /// CUDA.
    Cuda,
    /// TensorRT (with CUDA for what it does not take).
    TensorRt,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "CPU",
            Provider::Cuda => "CUDA",
            Provider::TensorRt => "TensorRT",
        })
    }
}

/// Loaded ONNX Runtime plus the provider policy.
pub struct Runtime {
    loaded: &'static Loaded,
    config: RuntimeConfig,
    /// What the operator must be told (fallbacks), in order.
    notices: std::sync::Mutex<Vec<String>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.loaded.path)
            .field("device", &self.config.device)
            .finish()
    }
}

impl Runtime {
    /// Find and load ONNX Runtime (once per process) and check that the
    /// requested provider exists in it.
    pub fn new(config: &RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let path = find_library(config.onnxruntime.as_deref())?;
        let loaded = loaded(&path)?;
        let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
        if !same(&loaded.path, &path) {
            return Err(RuntimeError::AlreadyLoaded {
                loaded: loaded.path.clone(),
                wanted: path,
            });
        }
        let rt = Runtime {
            loaded,
            config: config.clone(),
            notices: std::sync::Mutex::new(Vec::new()),
        };
        let wants_gpu = matches!(config.device, DeviceChoice::Cuda | DeviceChoice::Tensorrt);
        if config.device != DeviceChoice::Cpu && !loaded.cuda {
            let msg = format!(
                "the ONNX Runtime at {} has no CUDA provider (it is the CPU build); \
                 decoding runs on CPU. For the GPU install onnxruntime-gpu=={ORT_PYPI}",
                loaded.path.display()
            );
            if wants_gpu && config.require_gpu {
                return Err(RuntimeError::GpuRequired(msg));
            }
            if wants_gpu || config.device == DeviceChoice::Auto {
                rt.announce(msg);
            }
        }
        if config.device == DeviceChoice::Tensorrt && loaded.cuda && !loaded.tensorrt {
            rt.announce(format!(
                "the ONNX Runtime at {} has no TensorRT provider; using CUDA",
                loaded.path.display()
            ));
        }
        Ok(rt)
    }

    /// The library in use.
    pub fn library(&self) -> &Path {
        &self.loaded.path
    }

    /// Its release (from the file name).
    pub fn version(&self) -> String {
        self.loaded.version.clone()
    }

    fn announce(&self, msg: String) {
        tracing::warn!("{msg}");
        if let Ok(mut n) = self.notices.lock() {
            n.push(msg);
        }
    }

    /// Fallback notices so far (each was also logged as a warning).
    pub fn notices(&self) -> Vec<String> {
        self.notices.lock().map(|n| n.clone()).unwrap_or_default()
    }

    fn base_builder(&self) -> Result<SessionBuilder, String> {
        let b = Session::builder(&self.loaded.env).map_err(|e| e.to_string())?;
        let b = b
            .with_optimization_level(GraphOptimizationLevel::All)
            .unwrap_or_else(|e| e.recover());
        if self.config.threads > 0 {
            b.with_intra_threads(self.config.threads)
                .map_err(|e| e.to_string())
        } else {
            Ok(b)
        }
    }

    fn gpu_chain(&self) -> Vec<(Provider, ep::ExecutionProviderDispatch)> {
        let id = self.config.gpu;
        let c = &self.config.cuda;
        let cuda = || {
            let mut e = ep::CUDA::default()
                .with_device_id(id)
                .with_conv_algorithm_search(match c.conv_algorithm_search {
                    ConvSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
                    ConvSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
                    ConvSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
                })
                .with_cuda_graph(c.cuda_graph);
            if let Some(gb) = c.memory_limit_gb {
                e = e.with_memory_limit(gigabytes(gb));
            }
            if let Some(tf32) = c.tf32 {
                e = e.with_tf32(tf32);
            }
            e.build().error_on_failure()
        };
        let t = &self.config.tensorrt;
        let tensorrt = || {
            let cache = t.cache_dir();
            if let Err(e) = std::fs::create_dir_all(&cache) {
                self.announce(format!(
                    "TensorRT engine cache {}: {e}; engines are rebuilt at every start",
                    cache.display()
                ));
            }
            let cache = cache.to_string_lossy().into_owned();
            let mut e = ep::TensorRT::default()
                .with_device_id(id)
                .with_fp16(t.fp16)
                .with_engine_cache(true)
                .with_engine_cache_path(&cache)
                .with_timing_cache(t.timing_cache)
                .with_timing_cache_path(&cache);
            if let Some(gb) = t.max_workspace_gb {
                e = e.with_max_workspace_size(gigabytes(gb));
            }
            e.build().error_on_failure()
        };
        match self.config.device {
            DeviceChoice::Cpu => Vec::new(),
            _ if !self.loaded.cuda => Vec::new(),
            DeviceChoice::Tensorrt if self.loaded.tensorrt => {
                vec![(Provider::TensorRt, tensorrt())]
            }
            _ => vec![(Provider::Cuda, cuda())],
        }
    }

    fn session(&self, role: &'static str, path: &Path) -> Result<(Session, Provider), ModelError> {
        let graph_err = |message: String| ModelError::Graph {
            role,
            path: path.to_path_buf(),
            message,
        };
        for (provider, dispatch) in self.gpu_chain() {
            let attempt = self.base_builder().and_then(|b| {
                b.with_execution_providers([dispatch])
                    .map_err(|e| e.to_string())?
                    .commit_from_file(path)
                    .map_err(|e| e.to_string())
            });
            match attempt {
                Ok(s) => return Ok((s, provider)),
                Err(e) => {
                    let msg = format!(
                        "{role} graph {}: {provider} unusable ({e}); running it on CPU",
                        path.display()
                    );
                    if self.config.require_gpu {
                        return Err(ModelError::Runtime(RuntimeError::GpuRequired(msg)));
                    }
                    self.announce(msg);
                }
            }
        }
        let s = self
            .base_builder()
            .map_err(&graph_err)?
            .commit_from_file(path)
            .map_err(|e| graph_err(format!("not a loadable ONNX graph: {e}")))?;
        Ok((s, Provider::Cpu))
    }

    /// Load a graph and check its inputs and outputs against the manifest:
    /// every manifest tensor exists with that dtype and a compatible shape,
    /// and the graph needs no input the manifest does not feed.
    pub fn load_graph(
        &self,
        role: &'static str,
        path: &Path,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
    ) -> Result<Graph, ModelError> {
        let (session, provider) = self.session(role, path)?;
        let mismatch = |tensor: String, expected: String, found: String| ModelError::Mismatch {
            role,
            path: path.to_path_buf(),
            tensor,
            expected,
            found,
        };
        let names = |list: &[ort::value::Outlet]| -> String {
            let n: Vec<String> = list.iter().map(|o| format!("`{}`", o.name())).collect();
            if n.is_empty() {
                "none".into()
            } else {
                n.join(", ")
            }
        };
        let check = |spec: &TensorSpec,
                     list: &[ort::value::Outlet],
                     kind: &str|
         -> Result<(), ModelError> {
            let Some(o) = list.iter().find(|o| o.name() == spec.name) else {
                return Err(mismatch(
                    format!("{kind} `{}`", spec.name),
                    format!("an {kind} named `{}`", spec.name),
                    format!("{kind}s {}", names(list)),
                ));
            };
            let (ty, shape) = match o.dtype() {
                ValueType::Tensor { ty, shape, .. } => (*ty, shape.to_vec()),
                other => {
                    return Err(mismatch(
                        format!("{kind} `{}`", spec.name),
                        "a tensor".into(),
                        format!("{other:?}"),
                    ));
                }
            };
            let want = match spec.dtype {
                Dtype::Float32 => TensorElementType::Float32,
                Dtype::Int64 => TensorElementType::Int64,
            };
            if ty != want {
                return Err(mismatch(
                    format!("{kind} `{}` dtype", spec.name),
                    spec.dtype.to_string(),
                    format!("{ty:?}").to_lowercase(),
                ));
            }
            if !super::tensor::shapes_agree(&spec.shape, &shape) {
                return Err(mismatch(
                    format!("{kind} `{}` shape", spec.name),
                    shape_str(&spec.shape),
                    shape_str(&shape),
                ));
            }
            Ok(())
        };
        for s in &inputs {
            check(s, session.inputs(), "input")?;
        }
        if let Some(extra) = session
            .inputs()
            .iter()
            .find(|o| !inputs.iter().any(|s| s.name == o.name()))
        {
            return Err(mismatch(
                format!("input `{}`", extra.name()),
                format!("only the inputs {}", {
                    let n: Vec<String> = inputs.iter().map(|s| format!("`{}`", s.name)).collect();
                    n.join(", ")
                }),
                "an input the manifest does not feed".into(),
            ));
        }
        for s in &outputs {
            check(s, session.outputs(), "output")?;
        }
        Ok(Graph {
            role,
            path: path.to_path_buf(),
            session,
            provider,
            inputs,
            outputs,
            out_names: Vec::new(),
        })
    }
}

/// One input value for [`Graph::run`].
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// float32 data.
    F32(&'a [f32]),
    /// int64 data.
    I64(&'a [i64]),
}

/// A loaded, checked graph.
pub struct Graph {
    role: &'static str,
    path: PathBuf,
    session: Session,
    provider: Provider,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    out_names: Vec<String>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("role", &self.role)
            .field("path", &self.path)
            .field("provider", &self.provider)
            .finish()
    }
}

impl Graph {
    /// Its role.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where it runs.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The inputs, in the order [`Graph::run`] takes them.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The outputs, in the order [`Graph::run`] fills them.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Run once: `inputs` in manifest order, each with its spec's element
    /// count; `outputs` (manifest order) are resized and filled. Returns the
    /// seconds ONNX Runtime spent executing (the rest is ours).
    pub fn run(
        &mut self,
        inputs: &[Input<'_>],
        outputs: &mut [&mut Vec<f32>],
    ) -> Result<f64, ModelError> {
        let role = self.role;
        let path = &self.path;
        let err = |message: String| ModelError::Graph {
            role,
            path: path.clone(),
            message,
        };
        if inputs.len() != self.inputs.len() || outputs.len() != self.outputs.len() {
            return Err(err(format!(
                "called with {} inputs and {} outputs; it has {} and {}",
                inputs.len(),
                outputs.len(),
                self.inputs.len(),
                self.outputs.len()
            )));
        }
        let mut feed = Vec::with_capacity(inputs.len());
        for (spec, value) in self.inputs.iter().zip(inputs) {
            let shape = spec.concrete();
            let n = spec.len();
            let v: ort::session::SessionInputValue<'_> = match (spec.dtype, value) {
                (Dtype::Float32, Input::F32(d)) if d.len() == n => {
                    TensorRef::from_array_view((shape, *d))
                        .map_err(|e| err(e.to_string()))?
                        .into()
                }
                (Dtype::Int64, Input::I64(d)) if d.len() == n => {
                    TensorRef::from_array_view((shape, *d))
                        .map_err(|e| err(e.to_string()))?
                        .into()
                }
                _ => {
                    return Err(err(format!(
                        "input `{}` given the wrong type or {} values for shape {}",
                        spec.name,
                        match value {
                            Input::F32(d) => d.len(),
                            Input::I64(d) => d.len(),
                        },
                        shape_str(&spec.shape)
                    )));
                }
            };
            feed.push((std::borrow::Cow::Borrowed(spec.name.as_str()), v));
        }
        if self.out_names.is_empty() {
            self.out_names = self.outputs.iter().map(|s| s.name.clone()).collect();
        }
        let t0 = Instant::now();
        let result = self.session.run(feed).map_err(|e| err(e.to_string()))?;
        let seconds = t0.elapsed().as_secs_f64();
        for ((spec, name), out) in self
            .outputs
            .iter()
            .zip(&self.out_names)
            .zip(outputs.iter_mut())
        {
            let value = result
                .get(name)
                .ok_or_else(|| err(format!("produced no output `{name}`")))?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| err(format!("output `{name}`: {e}")))?;
            if data.len() != spec.len() {
                return Err(err(format!(
                    "output `{name}` has shape {} ({} values); the manifest says {}",
                    shape_str(shape),
                    data.len(),
                    shape_str(&spec.shape)
                )));
            }
            out.clear();
            out.extend_from_slice(data);
        }
        Ok(seconds)
    }
}
