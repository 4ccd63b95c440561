"""safehold: backup and restore for self-hosted research and medical data platforms."""

import os

__version__ = "0.1.0"

# numpy (the index, pack buffers) uses no BLAS routine, but OpenBLAS starts a thread per core
# when numpy is imported, and they spin for a while: about 0.1 CPU-s of every command, on
# cores the work needs. One thread, unless the user asked for more.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
