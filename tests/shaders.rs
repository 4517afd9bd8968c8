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

/// Barrier placement, which naga does not check (its uniformity analysis ignores early returns): no
/// workgroup barrier (directly or in a called function) may follow a `return`, `break` or
/// `continue` taken under a condition that differs between the invocations of a workgroup, nor sit
/// in such a branch or loop. WGSL's uniformity rules (Tint, browsers) reject that, and on GPUs it is
/// undefined behaviour. An expression is non-uniform if it depends on a per-invocation builtin, a
/// read-write storage or workgroup load, an atomic or subgroup result, or a variable assigned such
/// a value or assigned under such a condition; function results are tracked per call (a result is
/// non-uniform only if it depends on a non-uniform argument), and anything passed by pointer counts
/// as non-uniform (the callee may store such a value through it). Stricter than WGSL in one way:
/// a variable is non-uniform everywhere once any assignment makes it so.
mod uniformity {
    use naga::{AddressSpace, Block, Expression as E, Function, Handle, Module, Statement as S, StorageAccess};
    use std::collections::HashMap;

    /// Where barriers are misplaced, as "function: what" lines.
    pub fn violations(module: &Module) -> Vec<String> {
        let mut out = Vec::new();
        for ep in &module.entry_points {
            let args: Vec<bool> = ep
                .function
                .arguments
                .iter()
                .map(|a| {
                    use naga::{Binding, BuiltIn};
                    !matches!(
                        a.binding,
                        Some(Binding::BuiltIn(BuiltIn::WorkGroupId | BuiltIn::NumWorkGroups | BuiltIn::WorkGroupSize))
                    )
                })
                .collect();
            analyze(module, &ep.function, &ep.name, &args, &mut out);
        }
        out
    }

    /// Whether `f` executes a barrier, directly or through a call.
    fn has_barrier(module: &Module, block: &Block) -> bool {
        block.iter().any(|s| match s {
            S::ControlBarrier(_) | S::MemoryBarrier(_) | S::WorkGroupUniformLoad { .. } => true,
            S::Call { function, .. } => has_barrier(module, &module.functions[*function].body),
            S::Block(b) => has_barrier(module, b),
            S::If { accept, reject, .. } => has_barrier(module, accept) || has_barrier(module, reject),
            S::Loop { body, continuing, .. } => has_barrier(module, body) || has_barrier(module, continuing),
            S::Switch { cases, .. } => cases.iter().any(|c| has_barrier(module, &c.body)),
            _ => false,
        })
    }

    /// Whether the function's result is non-uniform, given which arguments are; records misplaced
    /// barriers into `out`.
    fn analyze(module: &Module, f: &Function, name: &str, args: &[bool], out: &mut Vec<String>) -> bool {
        let mut locals: HashMap<Handle<naga::LocalVariable>, bool> = HashMap::new();
        // Variables only become non-uniform, one or more per pass: iterate until none changes
        // (at most one pass per variable, plus one), then report.
        for _ in 0..f.local_variables.len() + 2 {
            let mut st = State { module, f, args, locals: locals.clone(), memo: HashMap::new(), calls: HashMap::new() };
            let mut found = Vec::new();
            let mut result = false;
            st.block(&f.body, false, name, &mut found, &mut result);
            if st.locals == locals {
                out.extend(found);
                return result;
            }
            locals = st.locals;
        }
        panic!("{name}: uniformity of local variables did not settle");
    }

    struct State<'a> {
        module: &'a Module,
        f: &'a Function,
        args: &'a [bool],
        locals: HashMap<Handle<naga::LocalVariable>, bool>,
        memo: HashMap<Handle<naga::Expression>, bool>,
        /// Call results' uniformity, set at the calls.
        calls: HashMap<Handle<naga::Expression>, bool>,
    }

    /// How a block ends for some invocations only: a return (the rest of the function is then
    /// non-uniform), a break (the rest of the loop or switch) or a continue (the rest of the loop).
    #[derive(Default, Clone, Copy)]
    struct Exits {
        ret: bool,
        brk: bool,
        cont: bool,
    }

    impl Exits {
        fn or(self, o: Exits) -> Exits {
            Exits { ret: self.ret | o.ret, brk: self.brk | o.brk, cont: self.cont | o.cont }
        }
    }

    impl State<'_> {
        fn expr(&mut self, h: Handle<naga::Expression>) -> bool {
            if let Some(&v) = self.memo.get(&h) {
                return v;
            }
            let v = match &self.f.expressions[h] {
                E::Literal(_) | E::Constant(_) | E::Override(_) | E::ZeroValue(_) => false,
                E::LocalVariable(_) | E::GlobalVariable(_) | E::ArrayLength(_) => false,
                E::WorkGroupUniformLoadResult { .. } => false,
                E::FunctionArgument(i) => self.args[*i as usize],
                E::Load { pointer } => self.load(*pointer),
                E::Access { base, index } => {
                    let (b, i) = (*base, *index);
                    self.expr(b) | self.expr(i)
                }
                E::AccessIndex { base, .. } => self.expr(*base),
                E::Splat { value, .. } => self.expr(*value),
                E::Swizzle { vector, .. } => self.expr(*vector),
                E::Compose { components, .. } => components.clone().into_iter().fold(false, |a, c| a | self.expr(c)),
                E::Unary { expr, .. } => self.expr(*expr),
                E::Binary { left, right, .. } => {
                    let (l, r) = (*left, *right);
                    self.expr(l) | self.expr(r)
                }
                E::Select { condition, accept, reject } => {
                    let (c, a, r) = (*condition, *accept, *reject);
                    self.expr(c) | self.expr(a) | self.expr(r)
                }
                E::Relational { argument, .. } => self.expr(*argument),
                E::Math { arg, arg1, arg2, arg3, .. } => {
                    let all = [Some(*arg), *arg1, *arg2, *arg3];
                    all.into_iter().flatten().fold(false, |a, e| a | self.expr(e))
                }
                E::As { expr, .. } => self.expr(*expr),
                E::CallResult(_) => *self.calls.get(&h).expect("call results are set at the call"),
                // Atomics, subgroup results and anything not listed: non-uniform.
                _ => true,
            };
            self.memo.insert(h, v);
            v
        }

        /// The value behind a pointer: uniform for uniform and read-only storage globals (at a
        /// uniform index), as the variable says for locals, non-uniform for anything writable by
        /// other invocations.
        fn load(&mut self, pointer: Handle<naga::Expression>) -> bool {
            match &self.f.expressions[pointer] {
                E::Access { base, index } => {
                    let (b, i) = (*base, *index);
                    self.load(b) | self.expr(i)
                }
                E::AccessIndex { base, .. } => self.load(*base),
                E::LocalVariable(l) => *self.locals.get(l).unwrap_or(&false),
                E::GlobalVariable(g) => match self.module.global_variables[*g].space {
                    AddressSpace::Uniform | AddressSpace::Handle => false,
                    AddressSpace::Storage { access } => access.contains(StorageAccess::STORE),
                    _ => true,
                },
                E::FunctionArgument(i) => self.args[*i as usize],
                _ => true,
            }
        }

        /// Whether `h` is a pointer: a variable, an access into one, or a pointer argument.
        fn is_pointer(&self, h: Handle<naga::Expression>) -> bool {
            match &self.f.expressions[h] {
                E::LocalVariable(_) | E::GlobalVariable(_) => true,
                E::Access { base, .. } | E::AccessIndex { base, .. } => self.is_pointer(*base),
                E::FunctionArgument(i) => matches!(
                    self.module.types[self.f.arguments[*i as usize].ty].inner,
                    naga::TypeInner::Pointer { .. } | naga::TypeInner::ValuePointer { .. }
                ),
                _ => false,
            }
        }

        /// The local variable a store writes, if any (through field and index accesses).
        fn local_of(&mut self, pointer: Handle<naga::Expression>) -> Option<(Handle<naga::LocalVariable>, bool)> {
            match &self.f.expressions[pointer] {
                E::LocalVariable(l) => Some((*l, false)),
                E::AccessIndex { base, .. } => self.local_of(*base),
                E::Access { base, index } => {
                    let (b, i) = (*base, *index);
                    let idx = self.expr(i);
                    self.local_of(b).map(|(l, t)| (l, t | idx))
                }
                _ => None,
            }
        }

        fn block(
            &mut self,
            block: &Block,
            mut flow: bool,
            name: &str,
            found: &mut Vec<String>,
            result: &mut bool,
        ) -> Exits {
            let mut exits = Exits::default();
            for s in block.iter() {
                match s {
                    S::ControlBarrier(_) | S::MemoryBarrier(_) | S::WorkGroupUniformLoad { .. } if flow => {
                        found.push(format!("{name}: a barrier in non-uniform control flow"));
                    }
                    S::Store { pointer, value } => {
                        let v = self.expr(*value);
                        if let Some((l, idx)) = self.local_of(*pointer) {
                            if v | idx | flow {
                                self.locals.insert(l, true);
                            }
                        }
                    }
                    S::Call { function, arguments, result: res } => {
                        // A pointer argument: the callee may read anything through it or store a
                        // non-uniform value in it, so it counts as non-uniform, and so does the
                        // local it points to from here on.
                        let args: Vec<bool> = arguments
                            .iter()
                            .map(|&a| {
                                if !self.is_pointer(a) {
                                    return self.expr(a);
                                }
                                if let Some((l, _)) = self.local_of(a) {
                                    self.locals.insert(l, true);
                                }
                                true
                            })
                            .collect();
                        let callee = &self.module.functions[*function];
                        let callee_name = callee.name.clone().unwrap_or_default();
                        if flow && has_barrier(self.module, &callee.body) {
                            found.push(format!(
                                "{name}: calls {callee_name} (which has barriers) in non-uniform control flow"
                            ));
                        }
                        let r = analyze(self.module, callee, &callee_name, &args, found);
                        if let Some(e) = res {
                            self.calls.insert(*e, r);
                        }
                    }
                    S::Return { value } => {
                        if let Some(v) = value {
                            *result |= self.expr(*v) | flow;
                        }
                        exits.ret |= flow;
                    }
                    S::Break => exits.brk |= flow,
                    S::Continue => exits.cont |= flow,
                    S::Block(b) => {
                        let e = self.block(b, flow, name, found, result);
                        exits = exits.or(e);
                    }
                    S::If { condition, accept, reject } => {
                        let inner = flow | self.expr(*condition);
                        let a = self.block(accept, inner, name, found, result);
                        let r = self.block(reject, inner, name, found, result);
                        exits = exits.or(a).or(r);
                    }
                    S::Switch { selector, cases } => {
                        // A break leaves the switch only; a continue or return goes on out.
                        let inner = flow | self.expr(*selector);
                        for c in cases {
                            let e = self.block(&c.body, inner, name, found, result);
                            exits = exits.or(Exits { brk: false, ..e });
                        }
                    }
                    S::Loop { body, continuing, break_if } => {
                        // A loop some invocations leave early (or skip to the next iteration of)
                        // runs the rest of its body and its later iterations for the others
                        // only: walk it again with that flow.
                        let mut e = self.block(body, flow, name, found, result);
                        let left = e.brk | e.cont | e.ret;
                        let c = self.block(continuing, flow | left, name, found, result);
                        let cond = break_if.is_some_and(|b| self.expr(b));
                        if (left | c.brk | c.ret | cond) && !flow {
                            let mut again = Vec::new();
                            e = self.block(body, true, name, &mut again, result);
                            self.block(continuing, true, name, &mut again, result);
                            found.extend(again);
                        }
                        exits.ret |= e.ret | c.ret;
                    }
                    S::Atomic { result: Some(r), .. } => {
                        self.memo.insert(*r, true);
                    }
                    _ => {}
                }
                // After an exit taken by some invocations, the rest of this block runs for the others.
                flow |= exits.ret | exits.brk | exits.cont;
            }
            exits
        }
    }
}

#[test]
fn shaders_barriers_sit_in_uniform_control_flow() {
    let mut all = Vec::new();
    for name in shaders::module_names() {
        let (module, _) = common::naga_module(name);
        all.extend(uniformity::violations(&module).into_iter().map(|v| format!("{name}::{v}")));
    }
    all.sort();
    all.dedup();
    assert!(all.is_empty(), "barriers after non-uniform exits or in non-uniform branches:\n{}", all.join("\n"));
}

#[test]
fn the_uniformity_check_sees_what_naga_lets_through() {
    // Each snippet validates with naga; the check must reject those marked false and accept the rest.
    let head = "var<workgroup> w: array<u32, 64>;\n@group(0) @binding(0) var<uniform> n: u32;\n\
                @group(0) @binding(1) var<storage, read_write> rw: array<u32>;\n\
                var<workgroup> at: atomic<u32>;\n";
    let entry = |body: &str| {
        format!(
            "{head}fn helper(a: u32, b: u32) -> vec2<u32> {{ return vec2<u32>(a, b); }}\n\
             fn setp(p: ptr<function, u32>, v: u32) {{ *p = v; }}\n\
             fn getp(p: ptr<function, u32>) -> u32 {{ return *p; }}\n\
             fn sync(x: u32) {{ workgroupBarrier(); w[0] = x; }}\n\
             @compute @workgroup_size(64) fn main(@builtin(workgroup_id) wid: vec3<u32>, \
             @builtin(local_invocation_index) lid: u32) {{\n{body}\n}}"
        )
    };
    let cases = [
        ("if (lid == 0u) { return; } workgroupBarrier();", false),
        ("let h = helper(wid.x, lid); if (h.x > n) { return; } workgroupBarrier();", false),
        ("for (var i = lid; i < n; i = i + 64u) { workgroupBarrier(); }", false),
        ("if (rw[0] > 0u) { return; } sync(1u);", false),
        ("var k = 0u; if (lid > 3u) { k = 1u; } if (k == 1u) { return; } workgroupBarrier();", false),
        // A continue out of a switch, a return inside a loop (before and in its continuing block).
        ("for (var i = 0u; i < n; i = i + 1u) { switch lid { case 0u: { continue; } default: {} } workgroupBarrier(); }", false),
        ("for (var i = 0u; i < n; i = i + 1u) { workgroupBarrier(); if (lid == 0u) { return; } }", false),
        ("var i = 0u; loop { if (lid == 0u) { return; } continuing { workgroupBarrier(); i = i + 1u; break if i >= n; } }", false),
        // A value through a pointer argument, either way; a later iteration's store feeding an
        // earlier load (the fixpoint); an atomic; a non-uniform switch selector; break_if.
        ("var k = 0u; setp(&k, lid); if (k == 1u) { return; } workgroupBarrier();", false),
        ("var k = 0u; if (lid > 3u) { k = 1u; } if (getp(&k) == 1u) { return; } workgroupBarrier();", false),
        ("var k = 0u; var j = 0u; for (var i = 0u; i < 2u; i = i + 1u) { if (k == 1u) { return; } k = j; j = lid; } workgroupBarrier();", false),
        ("if (atomicLoad(&at) == 1u) { return; } workgroupBarrier();", false),
        ("switch lid { case 0u: { workgroupBarrier(); } default: {} }", false),
        ("var i = 0u; loop { workgroupBarrier(); continuing { i = i + 1u; break if i >= lid; } }", false),
        ("if (wid.x >= n) { return; } workgroupBarrier();", true),
        ("let h = helper(wid.x, n); if (h.x > 2u) { return; } sync(lid);", true),
        ("for (var s = 32u; s > 0u; s = s >> 1u) { if (lid < s) { w[lid] = s; } workgroupBarrier(); }", true),
        ("switch n { case 0u: { workgroupBarrier(); } default: {} } var k = n; setp(&k, 2u);", true),
    ];
    for (body, ok) in cases {
        let src = entry(body);
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{}", e.emit_to_string(&src)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("naga rejects {body}: {}", e.emit_to_string(&src)));
        let found = uniformity::violations(&module);
        assert_eq!(found.is_empty(), ok, "{body}: {found:?}");
    }
}
