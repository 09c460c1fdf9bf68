"""The one compiled part: node/native/_dcmnet, the receive path on dcmtk's libdcmnet.

Everything else is in pyproject.toml. The extension is optional: without
Debian's libdcmtk-dev and a C++ compiler (scripts/setup.sh installs both) the
package installs without it, and ``[node] receiver = "dcmtk"`` says so when
the node starts.
"""

import sysconfig

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "node.native._dcmnet",
            sources=["node/native/dcmnet.cpp"],
            include_dirs=[sysconfig.get_paths()["include"]],
            libraries=["dcmtls", "dcmnet", "dcmdata", "oflog", "ofstd", "ssl", "crypto"],
            extra_compile_args=["-std=c++17", "-O2", "-Wall", "-Wextra"],
            language="c++",
            optional=True,
        )
    ]
)
