//! [`Tensor`]: an f32 GPU buffer with a shape, and [`TensorView`]: a window into an arena.

use super::Context;
use crate::error::{Error, Result};
use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// An f32 tensor in a GPU storage buffer. Zero-size tensors are allowed (the buffer is a stub).
#[derive(Debug)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    shape: Vec<usize>,
}

impl Tensor {
    /// A zero-filled tensor.
    pub fn zeros(ctx: &Context, shape: &[usize]) -> Result<Self> {
        let len: usize = shape.iter().product();
        let buffer = ctx.storage_buffer("tensor", 4 * len as u64)?;
        Ok(Tensor { buffer, shape: shape.to_vec() })
    }

    /// Uploads `data` (row-major) with the given shape.
    ///
    /// ```
    /// # let ctx = gpuopt::Context::new()?;
    /// let t = gpuopt::Tensor::from_slice(&ctx, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
    /// assert_eq!(t.to_vec(&ctx)?, vec![1.0, 2.0, 3.0, 4.0]);
    /// assert!(gpuopt::Tensor::from_slice(&ctx, &[1.0], &[2, 2]).is_err());
    /// # Ok::<(), gpuopt::Error>(())
    /// ```
    pub fn from_slice(ctx: &Context, data: &[f32], shape: &[usize]) -> Result<Self> {
        let len: usize = shape.iter().product();
        if len != data.len() {
            return Err(Error::Shape {
                what: "Tensor::from_slice".into(),
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        let t = Self::zeros(ctx, shape)?;
        if len > 0 {
            ctx.queue().write_buffer(&t.buffer, 0, bytemuck::cast_slice(data));
        }
        Ok(t)
    }

    /// Uploads an ndarray (any layout).
    pub fn from_array(ctx: &Context, a: ArrayViewD<'_, f32>) -> Result<Self> {
        let data: Vec<f32> = a.iter().copied().collect();
        Self::from_slice(ctx, &data, a.shape())
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Downloads the data (waits for the GPU).
    pub fn to_vec(&self, ctx: &Context) -> Result<Vec<f32>> {
        ctx.read_f32(&self.buffer, 0, self.len())
    }

    /// Downloads into an ndarray of the tensor's shape.
    pub fn to_array(&self, ctx: &Context) -> Result<ArrayD<f32>> {
        let v = self.to_vec(ctx)?;
        ArrayD::from_shape_vec(IxDyn(&self.shape), v).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Overwrites the contents from a slice of the same length.
    pub fn write(&self, ctx: &Context, data: &[f32]) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::Shape {
                what: "Tensor::write".into(),
                expected: self.shape.clone(),
                got: vec![data.len()],
            });
        }
        if !data.is_empty() {
            ctx.queue().write_buffer(&self.buffer, 0, bytemuck::cast_slice(data));
        }
        Ok(())
    }
}

/// A tensor inside an arena buffer: the buffer, the byte offset of its first element and its shape.
/// Offsets are multiples of 256 bytes, so a view can be bound as a storage-buffer range by users'
/// own kernels.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// The arena buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of element 0.
    pub offset: u64,
    /// Shape (row-major).
    pub shape: &'a [usize],
}

impl TensorView<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the view has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size in bytes.
    pub fn byte_len(&self) -> u64 {
        4 * self.len() as u64
    }

    /// The view as a binding resource (for the user's bind groups). `None` for an empty view, which
    /// WebGPU cannot bind.
    pub fn binding(&self) -> Option<wgpu::BindingResource<'_>> {
        std::num::NonZeroU64::new(self.byte_len()).map(|size| {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.buffer,
                offset: self.offset,
                size: Some(size),
            })
        })
    }
}
