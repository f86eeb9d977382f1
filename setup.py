"""The C part of gpufleet; everything else is declared in pyproject.toml.

gpufleet._native holds C fast paths of the collector's hottest loops: GPU rows decoded and
checked, `gpu` lines written, GPU-windows split among tenants (see gpufleet/native.c). Optional:
where it cannot be built (no C compiler or no Python headers) the install still succeeds and the
collector runs the same Python code, about twice as slowly; `gpufleet collector` logs which.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gpufleet._native",
            sources=["gpufleet/native.c"],
            optional=True,
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
        )
    ]
)
