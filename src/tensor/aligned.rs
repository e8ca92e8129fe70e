//! Buffers aligned to cache lines for the GEMM kernels' packed operands.

/// A buffer whose elements start on a 64-byte boundary wherever the allocator put it (glibc
/// puts large blocks 16 bytes past a page). AMX tile rows and AVX-512 loads are 64 bytes, and
/// one that straddles two cache lines loads slower: the bf16 product 10×300·300×1200 ran at
/// 390 or 860 GFLOP/s by where the heap happened to place A's copy and B's panels (session 10).
#[derive(Default)]
pub struct Aligned<T> {
    buf: Vec<T>,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    pub const fn new() -> Self {
        Aligned { buf: Vec::new(), len: 0 }
    }

    fn offset(&self) -> usize {
        let misalign = self.buf.as_ptr() as usize % 64;
        (64 - misalign) % 64 / std::mem::size_of::<T>()
    }

    /// `len` elements whose values are unspecified (the caller writes every one).
    pub fn resized(&mut self, len: usize) -> &mut [T] {
        self.buf.resize(len + 64 / std::mem::size_of::<T>(), T::default());
        self.len = len;
        let o = self.offset();
        &mut self.buf[o..o + len]
    }

    /// `len` elements, all `T::default()` (zero).
    pub fn zeroed(&mut self, len: usize) -> &mut [T] {
        let s = self.resized(len);
        s.fill(T::default());
        s
    }

    pub fn as_slice(&self) -> &[T] {
        let o = self.offset();
        &self.buf[o..o + self.len]
    }
}
