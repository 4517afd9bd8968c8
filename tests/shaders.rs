//! Every composed WGSL module parses and validates with naga, and every kernel's declared bindings
//! (the explicit bind-group layout) match what its entry point uses, binding by binding.

use gpuopt::gpu::Binding;
use gpuopt::kernels::all_specs;
use gpuopt::shaders;
use std::collections::BTreeMap;

mod common;

#[test]
fn shaders_every_module_validates_with_naga() {
    for name in shaders::module_names() {
        common::naga_module(name);
    }
}

#[test]
fn shaders_kernel_bindings_match_reflection() {
    for spec in all_specs() {
        let (module, info) = common::naga_module(spec.module);
        let (index, _) = module
            .entry_points
            .iter()
            .enumerate()
            .find(|(_, ep)| ep.name == spec.entry)
            .unwrap_or_else(|| panic!("{}: no entry point {}", spec.module, spec.entry));
        let uses = info.get_entry_point(index);
        let mut used = BTreeMap::new();
        for (handle, var) in module.global_variables.iter() {
            if uses[handle].is_empty() {
                continue;
            }
            let Some(rb) = &var.binding else { continue };
            assert_eq!(rb.group, 0, "{}::{} uses group {}", spec.module, spec.entry, rb.group);
            let kind = match var.space {
                naga::AddressSpace::Uniform => Binding::Uniform,
                naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => {
                    Binding::ReadWrite
                }
                naga::AddressSpace::Storage { .. } => Binding::ReadOnly,
                other => panic!("{}::{}: unexpected address space {other:?}", spec.module, spec.entry),
            };
            used.insert(rb.binding, kind);
        }
        let declared: BTreeMap<u32, Binding> = spec.bindings.iter().copied().collect();
        assert_eq!(declared, used, "{}::{}: declared bindings vs shader", spec.module, spec.entry);
    }
}
