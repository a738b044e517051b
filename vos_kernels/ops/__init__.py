"""The custom ops (one module per op): input checks, backend choice, autograd, fake kernels."""
