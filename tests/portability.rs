//! Portability without a device: every composed WGSL module validates with naga and translates with
//! naga's back ends to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES 3.10 compute (the GL /
//! WebGL-class fallback); every kernel stays inside WebGPU's default limits; kernels over the
//! downlevel (WebGL-class) limits are refused by the host's limit check before compilation.
//! Optional features: only `gemm_panel` (the CPU-adapter GEMM) uses subgroups, validated with that
//! capability and translated like the rest; nothing uses f16. No back end is skipped.

use gpuopt::gpu::check_kernel_limits;
use gpuopt::kernels::all_specs;
use gpuopt::shaders;

mod common;

#[test]
fn portability_every_shader_translates_to_every_back_end() {
    let mut translated = 0;
    for name in shaders::module_names() {
        let (module, info) = common::naga_module(name);
        naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("shader {name}, back end SPIR-V: {e}"));
        for ep in &module.entry_points {
            let entry = ep.name.clone();
            let msl_pipe =
                naga::back::msl::PipelineOptions { entry_point: Some((ep.stage, entry.clone())), ..Default::default() };
            naga::back::msl::write_string(&module, &info, &naga::back::msl::Options::default(), &msl_pipe)
                .unwrap_or_else(|e| panic!("shader {name}::{entry}, back end MSL: {e:?}"));
            let hlsl_opts = naga::back::hlsl::Options::default();
            let hlsl_pipe = naga::back::hlsl::PipelineOptions { entry_point: Some((ep.stage, entry.clone())) };
            let mut hlsl = String::new();
            naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &hlsl_pipe)
                .write(&module, &info, None)
                .unwrap_or_else(|e| panic!("shader {name}::{entry}, back end HLSL: {e}"));
            let glsl_opts = naga::back::glsl::Options::default(); // GLSL ES 3.10, compute
            let glsl_pipe = naga::back::glsl::PipelineOptions {
                shader_stage: ep.stage,
                entry_point: entry.clone(),
                multiview: None,
            };
            let mut glsl = String::new();
            naga::back::glsl::Writer::new(
                &mut glsl,
                &module,
                &info,
                &glsl_opts,
                &glsl_pipe,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .and_then(|mut w| w.write())
            .unwrap_or_else(|e| panic!("shader {name}::{entry}, back end GLSL ES 3.10: {e}"));
            assert!(glsl.contains("#version 310 es"));
            translated += 1;
        }
    }
    assert!(translated >= all_specs().len(), "every kernel's entry point was translated");
}

/// Workgroup size, workgroup memory, storage buffers and 64-bit types, read from the shaders.
#[test]
fn portability_kernels_fit_webgpu_default_limits() {
    let default = wgpu::Limits::default();
    let downlevel = wgpu::Limits::downlevel_defaults();
    let mut over_downlevel = Vec::new();
    for spec in all_specs() {
        let (module, info) = common::naga_module(spec.module);
        let (index, ep) = module.entry_points.iter().enumerate().find(|(_, ep)| ep.name == spec.entry).unwrap();
        let [x, y, z] = ep.workgroup_size;
        let what = format!("{}::{}", spec.module, spec.entry);
        assert!(x * y * z <= default.max_compute_invocations_per_workgroup, "{what}: {x}x{y}x{z} invocations");
        assert!(
            x <= default.max_compute_workgroup_size_x
                && y <= default.max_compute_workgroup_size_y
                && z <= default.max_compute_workgroup_size_z
        );
        let uses = info.get_entry_point(index);
        let mut workgroup_bytes = 0u32;
        let mut storage = 0u32;
        for (h, var) in module.global_variables.iter() {
            if uses[h].is_empty() {
                continue;
            }
            match var.space {
                naga::AddressSpace::WorkGroup => workgroup_bytes += module.types[var.ty].inner.size(module.to_ctx()),
                naga::AddressSpace::Storage { .. } => storage += 1,
                _ => {}
            }
        }
        assert!(
            workgroup_bytes <= default.max_compute_workgroup_storage_size,
            "{what}: {workgroup_bytes} bytes of workgroup memory"
        );
        assert!(storage <= default.max_storage_buffers_per_shader_stage, "{what}: {storage} storage buffers");
        assert!(check_kernel_limits(&spec, &default).is_ok());
        // Downlevel (WebGL-class) devices: the host must refuse, with the limit named, whatever exceeds.
        if workgroup_bytes > downlevel.max_compute_workgroup_storage_size {
            let declared = gpuopt::gpu::LARGE_WORKGROUP_MEMORY
                .iter()
                .any(|&(m, e, bytes)| m == spec.module && e == spec.entry && bytes >= workgroup_bytes);
            assert!(declared, "{what}: {workgroup_bytes} bytes of workgroup memory, not in LARGE_WORKGROUP_MEMORY");
        }
        let fits_downlevel = storage <= downlevel.max_storage_buffers_per_shader_stage
            && workgroup_bytes <= downlevel.max_compute_workgroup_storage_size
            && x * y * z <= downlevel.max_compute_invocations_per_workgroup;
        let checked = check_kernel_limits(&spec, &downlevel);
        if fits_downlevel {
            assert!(checked.is_ok(), "{what}: {checked:?}");
        } else {
            let msg = checked.expect_err("the host refuses kernels over the downlevel limits").to_string();
            let names_limit = ["max_storage_buffers_per_shader_stage", "max_compute_workgroup_storage_size"]
                .iter()
                .any(|l| msg.contains(l));
            assert!(msg.contains(spec.entry) && names_limit, "{msg}");
            over_downlevel.push(what);
        }
    }
    // Stated, not hidden: which kernels need more than a WebGL-class device offers.
    eprintln!("kernels over downlevel_defaults (refused on such devices): {over_downlevel:?}");
}

#[test]
fn portability_no_64_bit_types() {
    for name in shaders::module_names() {
        let (module, _) = common::naga_module(name);
        for (_, ty) in module.types.iter() {
            let scalar = match &ty.inner {
                naga::TypeInner::Scalar(s) | naga::TypeInner::Vector { scalar: s, .. } | naga::TypeInner::Atomic(s) => {
                    Some(*s)
                }
                naga::TypeInner::Matrix { scalar, .. } => Some(*scalar),
                _ => None,
            };
            if let Some(s) = scalar {
                assert!(s.width <= 4, "shader {name} uses a {}-byte {:?}", s.width, s.kind);
            }
        }
    }
}
