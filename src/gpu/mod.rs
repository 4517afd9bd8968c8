//! The GPU host layer: device selection ([`Context`]), buffers ([`Tensor`]), the pipeline cache,
//! dispatch geometry and readback.

mod tensor;
mod timer;

pub use tensor::{Tensor, TensorView};
pub use timer::{PairedTiming, Timing};

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a kernel's binding is used; the bind-group layout is built from this list and checked against
/// the shader by naga reflection in `tests/shaders.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// `var<uniform>`
    Uniform,
    /// `var<storage, read>`
    ReadOnly,
    /// `var<storage, read_write>`
    ReadWrite,
}

/// A compute kernel: module, entry point and its bindings (group 0) in binding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelSpec {
    /// Module name under `shaders/` (without `.wgsl`).
    pub module: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// (binding number, kind) pairs.
    pub bindings: &'static [(u32, Binding)],
}

/// Checks a kernel's bindings against a device's limits before anything is compiled, so an adapter
/// with fewer storage buffers per stage than a kernel needs (WebGL-class downlevel devices allow 4;
/// MARS-AdamW binds 8) gets an error that names the kernel and the limit, not a validation failure.
pub fn check_kernel_limits(spec: &KernelSpec, limits: &wgpu::Limits) -> Result<()> {
    let storage = spec.bindings.iter().filter(|(_, b)| *b != Binding::Uniform).count() as u32;
    let uniform = spec.bindings.len() as u32 - storage;
    let over = |what: &str, need: u32, limit: u32| {
        Error::Invalid(format!(
            "kernel {}::{} needs {need} {what} per shader stage; this device allows {limit}",
            spec.module, spec.entry
        ))
    };
    if storage > limits.max_storage_buffers_per_shader_stage {
        return Err(over(
            "storage buffers (max_storage_buffers_per_shader_stage)",
            storage,
            limits.max_storage_buffers_per_shader_stage,
        ));
    }
    if uniform > limits.max_uniform_buffers_per_shader_stage {
        return Err(over(
            "uniform buffers (max_uniform_buffers_per_shader_stage)",
            uniform,
            limits.max_uniform_buffers_per_shader_stage,
        ));
    }
    let workgroup = LARGE_WORKGROUP_MEMORY
        .iter()
        .find(|(m, e, _)| *m == spec.module && *e == spec.entry)
        .map_or(0, |&(_, _, bytes)| bytes);
    if workgroup > limits.max_compute_workgroup_storage_size {
        return Err(over(
            "bytes of workgroup memory (max_compute_workgroup_storage_size)",
            workgroup,
            limits.max_compute_workgroup_storage_size,
        ));
    }
    Ok(())
}

/// The kernels that need more workgroup memory than WebGL-class downlevel devices offer (16,352
/// bytes), with their need in bytes: (module, entry, bytes). `tests/portability.rs` measures every
/// shader with naga and fails if one over that limit is missing here.
pub const LARGE_WORKGROUP_MEMORY: &[(&str, &str, u32)] =
    &[("gemm", "gemm_f32_128", 16384), ("gemm", "gemm_f32_128_prefetch", 16384)];

/// Workgroup size of every 1-D kernel in gpuopt.
pub const WORKGROUP_SIZE: u32 = 256;

/// Options for [`Context::with_options`]. Environment variables fill what is left `None`.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Backends to search (default: `WGPU_BACKEND`, else all).
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name (default: `WGPU_ADAPTER_NAME`).
    pub adapter_name: Option<String>,
    /// Cap on workgroups per grid dimension below the device's own; lets tests exercise the 2-D grid
    /// on small tensors. `None` uses the device limit.
    pub max_workgroups_per_dim: Option<u32>,
    /// Cap on the bytes of one storage binding below the device's own; lets tests exercise arena
    /// segmentation on small tensors. `None` uses the device limit.
    pub max_binding_bytes: Option<u64>,
    /// Cap on the loop iterations one shader invocation may run, below the driver's own
    /// ([`AdapterSummary::loop_limit`]); lets tests exercise the paths that keep loops short on any
    /// adapter. `None` uses the driver's.
    pub loop_limit: Option<u64>,
}

/// The loop iterations llvmpipe (lavapipe) lets one shader invocation run: Mesa's gallivm counts
/// every loop's iterations against one budget of `LP_MAX_TGSI_LOOP_ITERATIONS` (65,535) and, when it
/// runs out, silently leaves the loops, so a longer sum just stops short. Found by an audit: a GEMM
/// with k = 70,000 on the tiled kernel summed 58,255 of its terms.
pub const LLVMPIPE_LOOP_LIMIT: u64 = 65_535;

/// What [`Context::info`] reports about the adapter and the limits the device was opened with.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Adapter name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// Backend, e.g. Vulkan.
    pub backend: wgpu::Backend,
    /// Discrete / integrated / CPU ...
    pub device_type: wgpu::DeviceType,
    /// Driver name and version string.
    pub driver: String,
    /// The limits requested from (and granted by) the adapter.
    pub limits: wgpu::Limits,
    /// Whether GPU timestamps are available.
    pub timestamps: bool,
    /// The subgroup width when the device has subgroup operations and a fixed width (lavapipe: 8,
    /// its SIMD lanes); `None` otherwise. The CPU-adapter GEMM ([`crate::kernels::gemm::GemmKernel::Panel`])
    /// needs exactly 8.
    pub subgroup_size: Option<u32>,
    /// The most loop iterations one shader invocation may run before the driver stops it: llvmpipe's
    /// [`LLVMPIPE_LOOP_LIMIT`], or a test's [`ContextOptions::loop_limit`]; `None`: no such limit
    /// (GPUs). Kernels whose loops grow with a problem's size either split the work to stay under it
    /// (GEMM's k, Hutchinson's samples, DASGO's and REG's column bands) or refuse the problem with an
    /// error saying so.
    pub loop_limit: Option<u64>,
}

impl AdapterSummary {
    /// An error unless `iterations` loop iterations per invocation fit this adapter's
    /// [`AdapterSummary::loop_limit`]; `what` names the work and the size that sets the count.
    pub fn check_loop(&self, iterations: u64, what: &str) -> Result<()> {
        match self.loop_limit {
            Some(limit) if iterations > limit => Err(Error::Invalid(format!(
                "{what} needs {iterations} loop iterations in one shader invocation, and {} stops a shader's \
                 loops silently after {limit}: refused rather than cut short (a GPU has no such limit)",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    /// A CPU driver (lavapipe, WARP, SwiftShader): kernels that pick their shape per adapter class
    /// (the GEMM's tile, split-K, the bench sizes) take their CPU-driver branch.
    pub fn is_cpu(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.limits;
        writeln!(f, "adapter:        {}", self.name)?;
        writeln!(f, "backend:        {:?}", self.backend)?;
        writeln!(f, "device type:    {:?}", self.device_type)?;
        writeln!(f, "driver:         {}", self.driver)?;
        writeln!(f, "timestamps:     {}", self.timestamps)?;
        match self.subgroup_size {
            Some(w) => writeln!(f, "subgroups:      {w} lanes")?,
            None => writeln!(f, "subgroups:      no")?,
        }
        if let Some(l) = self.loop_limit {
            writeln!(f, "loop limit:     {l} iterations per shader invocation (kernels split or refuse longer loops)")?;
        }
        writeln!(f, "max_buffer_size:                     {}", l.max_buffer_size)?;
        writeln!(f, "max_storage_buffer_binding_size:     {}", l.max_storage_buffer_binding_size)?;
        writeln!(f, "max_storage_buffers_per_shader_stage: {}", l.max_storage_buffers_per_shader_stage)?;
        writeln!(f, "max_compute_workgroups_per_dimension: {}", l.max_compute_workgroups_per_dimension)?;
        writeln!(f, "max_compute_invocations_per_workgroup: {}", l.max_compute_invocations_per_workgroup)?;
        write!(f, "max_compute_workgroup_storage_size:   {}", l.max_compute_workgroup_storage_size)
    }
}

struct Cached {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    max_dim: u32,
    max_binding: u64,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<KernelSpec, Arc<Cached>>>,
    compiled: std::sync::atomic::AtomicUsize,
    /// 16 bytes bound where a kernel's read-only binding is never read (see [`Context::unused_binding`]).
    unused: wgpu::Buffer,
}

/// The device, its queue, the adapter's limits and the pipeline cache. Cheap to clone (shared).
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("adapter", &self.inner.summary.name).finish()
    }
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

impl Context {
    /// Opens the best adapter: a discrete GPU first, then integrated, virtual, and CPU (lavapipe);
    /// native backends before GL. Honours `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
    ///
    /// ```
    /// let ctx = gpuopt::Context::new()?; // an error naming `apt-get install mesa-vulkan-drivers` without one
    /// println!("{} ({:?})", ctx.info().name, ctx.info().backend);
    /// # Ok::<(), gpuopt::Error>(())
    /// ```
    pub fn new() -> Result<Self> {
        Self::with_options(ContextOptions::default())
    }

    /// As [`Context::new`] with explicit options.
    pub fn with_options(opts: ContextOptions) -> Result<Self> {
        let backends = opts.backends.or_else(wgpu::Backends::from_env).unwrap_or(wgpu::Backends::all());
        if backends.is_empty() {
            let env = std::env::var("WGPU_BACKEND").unwrap_or_default();
            return Err(Error::Invalid(format!(
                "no backend to search (WGPU_BACKEND={env:?}): name one or more of vulkan, metal, dx12, gl, webgpu"
            )));
        }
        let name_filter =
            opts.adapter_name.clone().or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok()).map(|s| s.to_lowercase());
        // Native backends first; GL (which also prints EGL noise where there is no display) only
        // when no native adapter is found or when asked for explicitly.
        let mut adapters = Self::adapters(backends & !wgpu::Backends::GL, name_filter.as_deref());
        if adapters.is_empty() && backends.contains(wgpu::Backends::GL) {
            adapters = Self::adapters(wgpu::Backends::GL, name_filter.as_deref());
        }
        adapters.sort_by_key(|a| {
            let info = a.get_info();
            (type_rank(info.device_type), u32::from(info.backend == wgpu::Backend::Gl))
        });
        let Some(adapter) = adapters.into_iter().next() else {
            let mut detail = format!(" (backends {backends:?}");
            if let Some(f) = &name_filter {
                detail.push_str(&format!(", name containing {f:?}"));
            }
            detail.push(')');
            return Err(Error::NoAdapter { detail });
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut features = wgpu::Features::empty();
        if timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        // Subgroup operations, where offered, for the CPU-adapter GEMM; no other kernel uses them.
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP);
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("gpuopt"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::RequestDevice(e.to_string()))?;
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            log::error!("uncaptured wgpu error: {e}");
        }));
        let max_dim = opts.max_workgroups_per_dim.map_or(limits.max_compute_workgroups_per_dimension, |m| {
            m.clamp(1, limits.max_compute_workgroups_per_dimension)
        });
        // At most 4 GiB − 4: the shaders index elements in u32 and walk past a binding's end by up
        // to a workgroup's stride, which stays far from 2^32 only while a binding holds < 2^30.
        let device_binding =
            limits.max_storage_buffer_binding_size.min(limits.max_buffer_size).min(u32::MAX as u64 & !3);
        let max_binding = opts.max_binding_bytes.map_or(device_binding, |m| m.clamp(256, device_binding));
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            limits,
            timestamps,
            subgroup_size: (subgroups && info.subgroup_min_size == info.subgroup_max_size)
                .then_some(info.subgroup_min_size),
            // The driver's budget and the caller's cap, whichever is lower (or the one there is).
            loop_limit: [info.name.contains("llvmpipe").then_some(LLVMPIPE_LOOP_LIMIT), opts.loop_limit]
                .into_iter()
                .flatten()
                .min(),
        };
        log::info!("gpuopt: using {} ({:?}, {:?})", summary.name, summary.backend, summary.device_type);
        let unused = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Context {
            inner: Arc::new(Inner {
                unused,
                device,
                queue,
                summary,
                max_dim,
                max_binding,
                modules: Mutex::new(HashMap::new()),
                pipelines: Mutex::new(HashMap::new()),
                compiled: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    fn adapters(backends: wgpu::Backends, name_filter: Option<&str>) -> Vec<wgpu::Adapter> {
        if backends.is_empty() {
            return Vec::new();
        }
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        pollster::block_on(instance.enumerate_adapters(backends))
            .into_iter()
            .filter(|a| {
                let info = a.get_info();
                let name_ok = name_filter.is_none_or(|f| info.name.to_lowercase().contains(f));
                let compute_ok = a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
                name_ok && compute_ok
            })
            .collect()
    }

    /// The adapter and the limits the device was opened with.
    pub fn info(&self) -> &AdapterSummary {
        &self.inner.summary
    }

    /// The wgpu device (for users' own kernels).
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The device limits in force.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.summary.limits
    }

    /// How many pipelines have been compiled in this context (the cache's test hook).
    pub fn pipelines_compiled(&self) -> usize {
        self.inner.compiled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` inside validation and out-of-memory error scopes and returns what they caught.
    pub fn scoped<T>(&self, context: &str, f: impl FnOnce() -> T) -> Result<T> {
        let device = &self.inner.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match v.or(o) {
            Some(e) => Err(Error::Gpu { context: context.to_string(), message: e.to_string() }),
            None => Ok(out),
        }
    }

    fn pipeline(&self, spec: &KernelSpec) -> Result<Arc<Cached>> {
        if let Some(p) = self.inner.pipelines.lock().unwrap().get(spec) {
            return Ok(p.clone());
        }
        check_kernel_limits(spec, self.limits())?;
        let device = &self.inner.device;
        let module = {
            let mut modules = self.inner.modules.lock().unwrap();
            match modules.get(spec.module) {
                Some(m) => m.clone(),
                None => {
                    let src = crate::shaders::composed(spec.module)?;
                    let m = self
                        .scoped(&format!("compiling shader {}", spec.module), || {
                            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                                label: Some(spec.module),
                                source: wgpu::ShaderSource::Wgsl(src.into()),
                            })
                        })
                        .map_err(|e| Error::Shader { name: spec.module.to_string(), message: e.to_string() })?;
                    modules.insert(spec.module, m.clone());
                    m
                }
            }
        };
        let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
            .bindings
            .iter()
            .map(|&(binding, kind)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match kind {
                    Binding::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Binding::ReadOnly | Binding::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: kind == Binding::ReadOnly },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let cached = self.scoped(&format!("building pipeline {}::{}", spec.module, spec.entry), || {
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(spec.entry),
                entries: &entries,
            });
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(spec.entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(spec.entry),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: Default::default(),
                cache: None,
            });
            Cached { pipeline, layout }
        })?;
        let cached = Arc::new(cached);
        self.inner.compiled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.pipelines.lock().unwrap().insert(*spec, cached.clone());
        Ok(cached)
    }

    /// Compiles (or fetches from the cache) `spec` and binds `buffers` (one per binding, in order).
    pub fn bind(&self, spec: &KernelSpec, buffers: &[&wgpu::Buffer]) -> Result<BoundKernel> {
        if buffers.len() != spec.bindings.len() {
            return Err(Error::Invalid(format!(
                "{}::{} takes {} buffers, got {}",
                spec.module,
                spec.entry,
                spec.bindings.len(),
                buffers.len()
            )));
        }
        let cached = self.pipeline(spec)?;
        let entries: Vec<wgpu::BindGroupEntry> = spec
            .bindings
            .iter()
            .zip(buffers)
            .map(|(&(binding, _), buf)| wgpu::BindGroupEntry { binding, resource: buf.as_entire_binding() })
            .collect();
        let bind_group = self.scoped(&format!("binding {}::{}", spec.module, spec.entry), || {
            self.inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(spec.entry),
                layout: &cached.layout,
                entries: &entries,
            })
        })?;
        Ok(BoundKernel { pipeline: cached, bind_group })
    }

    /// The largest storage binding gpuopt will create, in bytes (device limit or the test cap).
    pub fn max_binding_bytes(&self) -> u64 {
        self.inner.max_binding
    }

    /// The most workgroups per grid dimension (device limit or the test cap).
    pub fn max_workgroups_per_dim(&self) -> u32 {
        self.inner.max_dim
    }

    /// The (x, y) grid that covers `workgroups` with x at most the per-dimension limit.
    pub fn grid(&self, workgroups: u32) -> (u32, u32) {
        let x = workgroups.min(self.inner.max_dim).max(1);
        (x, workgroups.div_ceil(x))
    }

    /// Creates a storage buffer of `bytes` bytes (at least 16), refusing sizes over the device limits.
    pub fn storage_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let limits = self.limits();
        if bytes > limits.max_buffer_size {
            return Err(Error::TooLarge {
                what: label.to_string(),
                bytes,
                limit_name: "max_buffer_size",
                limit: limits.max_buffer_size,
            });
        }
        if bytes > self.inner.max_binding {
            return Err(Error::TooLarge {
                what: label.to_string(),
                bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: self.inner.max_binding,
            });
        }
        self.scoped(&format!("allocating {label}"), || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(16).next_multiple_of(4),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Creates a uniform buffer of `bytes` bytes.
    pub fn uniform_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A 16-byte storage buffer for read-only bindings a kernel never reads (an absent addend, no
    /// norms): one per context instead of one per plan (creating a buffer costs a few µs of host
    /// time). Never bind it for writing.
    pub fn unused_binding(&self) -> &wgpu::Buffer {
        &self.inner.unused
    }

    /// A new command encoder.
    pub fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.inner.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Submits one command buffer; returns its submission index.
    pub fn submit(&self, encoder: wgpu::CommandEncoder) -> wgpu::SubmissionIndex {
        self.inner.queue.submit(Some(encoder.finish()))
    }

    /// Blocks until all submitted work has finished.
    pub fn wait(&self) -> Result<()> {
        self.wait_for(None)
    }

    /// Blocks until the given submission (or all work when `None`) has finished.
    pub fn wait_for(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::Wait { submission_index: index, timeout: None })
            .map(|_| ())
            .map_err(|e| Error::Readback(e.to_string()))
    }

    /// Copies `len` f32 starting at byte `offset` of `buffer` back to the host (waits for the GPU).
    pub fn read_f32(&self, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(buffer, offset, 4 * len as u64)?;
        // The byte vector need not be 4-aligned, so no cast_slice here.
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Copies `size` bytes starting at `offset` of `buffer` back to the host (waits for the GPU).
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let staging = self.staging(size);
        let mut enc = self.encoder("readback");
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        let index = self.submit(enc);
        self.map_staging(&staging, Some(index))
    }

    pub(crate) fn staging(&self, size: u64) -> wgpu::Buffer {
        self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    pub(crate) fn map_staging(&self, staging: &wgpu::Buffer, index: Option<wgpu::SubmissionIndex>) -> Result<Vec<u8>> {
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait_for(index)?;
        rx.recv().map_err(|e| Error::Readback(e.to_string()))?.map_err(|e| Error::Readback(e.to_string()))?;
        let data = slice.get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?.to_vec();
        staging.unmap();
        Ok(data)
    }
}

/// Opens one compute pass on `encoder`. gpuopt records a whole step (or a whole chain of matrix
/// operations) into one pass: each pass costs wgpu a command-buffer switch and barrier set-up on
/// the host (about 8 us each on lavapipe, against under 1 us per dispatch inside one pass), while
/// dispatches within a pass still see each other's writes.
pub fn compute_pass<'e>(encoder: &'e mut wgpu::CommandEncoder, label: &str) -> wgpu::ComputePass<'e> {
    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: None })
}

/// A pipeline with its buffers bound, ready to be recorded into a compute pass.
pub struct BoundKernel {
    pipeline: Arc<Cached>,
    bind_group: wgpu::BindGroup,
}

impl BoundKernel {
    /// Records one dispatch of an explicit (x, y, z) grid into `pass`; returns 1. Later dispatches
    /// of the pass see its writes (each dispatch is its own usage scope: wgpu puts barriers between).
    pub fn record_3d(&self, pass: &mut wgpu::ComputePass<'_>, grid: (u32, u32, u32)) -> usize {
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(grid.0, grid.1, grid.2);
        1
    }

    /// Records one dispatch of `workgroups` workgroups (2-D grid from [`Context::grid`]) into
    /// `pass`. Zero workgroups records nothing and returns 0; otherwise returns 1 (the dispatch
    /// count, for tests that count dispatches).
    pub fn record(&self, ctx: &Context, pass: &mut wgpu::ComputePass<'_>, workgroups: u32) -> usize {
        if workgroups == 0 {
            return 0;
        }
        let (x, y) = ctx.grid(workgroups);
        self.record_3d(pass, (x, y, 1))
    }
}
