"""kpatch-tool: carry patch series across the Linux, QEMU and Xen trees."""

__version__ = "0.1.0"
