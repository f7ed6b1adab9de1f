"""proctree-exporter: Linux process trees from the kernel's proc connector."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("proctree-exporter")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
