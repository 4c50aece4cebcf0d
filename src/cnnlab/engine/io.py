"""Moved to cnnlab.io (the bottom layer: data, engine and the tools all write files atomically).

Kept so imports of cnnlab.engine.io go on working; new code imports cnnlab.io.
"""

from cnnlab.io import WriteError, as_os_error, atomic_path, write_bytes_atomic, write_text_atomic

__all__ = ["WriteError", "as_os_error", "atomic_path", "write_bytes_atomic", "write_text_atomic"]
