"""The ldmc side of a benchmark driver: `ldmc bench ... --json` at a thread count, with OpenBLAS
set to the kernels ldmc reports, so that PyTorch's GEMMs (Debian's OpenBLAS too) use the same."""
import json
import os
import re
import subprocess


def ldmc_json(ldmc, args, threads):
    """Runs `ldmc <args>` with LDMC_THREADS=threads; returns its last output line as JSON. Sets
    OPENBLAS_CORETYPE in this process for the PyTorch side that follows."""
    info = subprocess.run([ldmc, "info"], check=True, capture_output=True, text=True).stdout
    core = re.search(r"kernels for (\w+)", info)
    if core:
        os.environ["OPENBLAS_CORETYPE"] = core.group(1)
    env = dict(os.environ, LDMC_THREADS=str(threads))
    out = subprocess.run([ldmc, *args], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
