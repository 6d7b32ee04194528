"""HTTP-side helpers for flask_server.py: errors, upload parsing, feedback store, metrics, OpenAPI.

Imported before torch by every serving entry point (flask_server.py, gunicorn.conf.py, jobs/worker.py) for one
more reason: the server never compiles GPU kernels, but torchvision's import reaches torch._dynamo, which imports
Triton (torch.compile's GPU compiler) whenever it is installed, as it is with the CUDA build of torch: about
70 MiB of library pages in every serving process, for nothing (BENCHMARKS.md, "Memory"). An entry of None in
sys.modules makes `import triton` fail, which torch reads as "no Triton"; a process that imported Triton before
keeps it.
"""
import sys

sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
