"""Build of the optional native image kernels; all other metadata lives in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and
phi3v.modeling.image_kernels falls back to Pillow + numpy (same output, slower)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "phi3v.modeling._hd_canvas",
            sources=["phi3v/modeling/_hd_canvas.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
