//! The multi-tensor arena: mirrors of the shader structs in `shaders/shared/arena.wgsl` and the
//! planner that lays tensors out in a flat buffer and cuts it into blocks.

use bytemuck::{Pod, Zeroable};

/// Elements per tensor alignment: every tensor starts on a 256-byte boundary (64 f32), which is the
/// largest `min_storage_buffer_offset_alignment` wgpu allows, so any view can be bound on its own.
pub const ALIGN_ELEMS: usize = 64;
/// vec4s per block: one workgroup of 256 invocations, up to four vec4s each (256 apart, so reads
/// stay coalesced). Four per invocation amortises the block and hyperparameter loads, which on
/// lavapipe moved Lion from 0.83 to 0.9 of copy bandwidth.
pub const BLOCK_VEC4: usize = 1024;
/// Parameter groups an optimizer may have (size of the uniform array).
pub const MAX_GROUPS: usize = 16;

/// One parameter group's per-step scalars. Keep in sync with `struct Hyper` in
/// `shaders/shared/arena.wgsl`; each kernel's header says what `c[0..9]` (`c1..c9`) mean.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Hyper {
    /// Learning rate.
    pub lr: f32,
    /// DW-B factor 1 − lr·wd (1 where the decay is L2 or not applied here).
    pub decay: f32,
    /// β1 (or momentum).
    pub beta1: f32,
    /// 1 − β1, rounded once from f64.
    pub omb1: f32,
    /// β2.
    pub beta2: f32,
    /// 1 − β2, rounded once from f64.
    pub omb2: f32,
    /// The optimizer's epsilon.
    pub eps: f32,
    /// Optimizer-specific slots c1..c9.
    pub c: [f32; 9],
}
const _: () = assert!(std::mem::size_of::<Hyper>() == 64);

/// The uniform block: one [`Hyper`] per group. Keep in sync with `struct Hypers`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Hypers {
    /// Per-group scalars.
    pub g: [Hyper; MAX_GROUPS],
}
const _: () = assert!(std::mem::size_of::<Hypers>() == 64 * MAX_GROUPS);

/// One block of the arena: at most [`BLOCK_VEC4`] vec4s of one tensor. Keep in sync with `struct Block`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Block {
    /// First vec4.
    pub start: u32,
    /// Number of vec4s.
    pub len: u32,
    /// Tensor index.
    pub tensor: u32,
    /// Parameter group.
    pub group: u32,
}
const _: () = assert!(std::mem::size_of::<Block>() == 16);

/// Where each tensor lives in the arena and how the arena is cut into blocks.
#[derive(Clone, Debug, Default)]
pub struct ArenaLayout {
    /// Element offset of each tensor (multiple of [`ALIGN_ELEMS`]).
    pub offsets: Vec<usize>,
    /// Element count of each tensor.
    pub lens: Vec<usize>,
    /// Total elements including padding (multiple of [`ALIGN_ELEMS`]).
    pub total: usize,
    /// The blocks, in arena order.
    pub blocks: Vec<Block>,
    /// Per tensor: (first block, number of blocks).
    pub tensor_blocks: Vec<[u32; 2]>,
}

impl ArenaLayout {
    /// Lays out tensors of the given lengths and groups in order.
    pub fn plan(lens: &[usize], groups: &[usize]) -> Self {
        let mut layout = ArenaLayout::default();
        let mut at = 0usize;
        for (t, (&len, &group)) in lens.iter().zip(groups).enumerate() {
            layout.offsets.push(at);
            layout.lens.push(len);
            let first = layout.blocks.len() as u32;
            let vec4s = len.div_ceil(4);
            let mut v = 0;
            while v < vec4s {
                let n = (vec4s - v).min(BLOCK_VEC4);
                layout.blocks.push(Block {
                    start: (at / 4 + v) as u32,
                    len: n as u32,
                    tensor: t as u32,
                    group: group as u32,
                });
                v += n;
            }
            layout.tensor_blocks.push([first, layout.blocks.len() as u32 - first]);
            at += len.next_multiple_of(ALIGN_ELEMS);
        }
        layout.total = at;
        layout
    }
}

/// Splits tensors (in order) into segments whose arenas hold at most `max_elems` elements each, so
/// every arena buffer fits one storage binding. Returns, per segment, the tensor indices and layout;
/// `Err(i)` names a tensor that alone exceeds `max_elems`.
pub fn plan_segments(
    lens: &[usize],
    groups: &[usize],
    max_elems: usize,
) -> Result<Vec<(Vec<usize>, ArenaLayout)>, usize> {
    let mut segments: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut size = 0usize;
    for (i, &len) in lens.iter().enumerate() {
        let padded = len.next_multiple_of(ALIGN_ELEMS);
        if padded > max_elems {
            return Err(i);
        }
        if size + padded > max_elems && !current.is_empty() {
            segments.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(i);
        size += padded;
    }
    if !current.is_empty() || segments.is_empty() {
        segments.push(current);
    }
    Ok(segments
        .into_iter()
        .map(|ids| {
            let l: Vec<usize> = ids.iter().map(|&i| lens[i]).collect();
            let g: Vec<usize> = ids.iter().map(|&i| groups[i]).collect();
            let layout = ArenaLayout::plan(&l, &g);
            (ids, layout)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_aligns_tensors_and_never_straddles_blocks() {
        let l = ArenaLayout::plan(&[1, 0, 4097, 7], &[0, 0, 1, 0]);
        assert_eq!(l.offsets, vec![0, 64, 64, 64 + 4160]);
        assert_eq!(l.total, 64 + 4160 + 64);
        // 4097 elements = 1025 vec4 = blocks of 1024 + 1
        assert_eq!(l.tensor_blocks, vec![[0, 1], [1, 0], [1, 2], [3, 1]]);
        assert_eq!(l.blocks[2], Block { start: 16 + 1024, len: 1, tensor: 2, group: 1 });
    }
}
