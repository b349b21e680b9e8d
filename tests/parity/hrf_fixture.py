"""Write nilearn's canonical HRF kernels as fixtures for tests/hrf_parity.rs.

The GLM's kernels (src/glm/hrf.rs) must equal nilearn's `glover_hrf` and
`spm_hrf` exactly as `make_first_level_design_matrix` samples them.

    .venv/bin/python tests/parity/hrf_fixture.py tests/fixtures/hrf
"""
import sys
from pathlib import Path

import nilearn
from nilearn.glm.first_level.hemodynamic_models import glover_hrf, spm_hrf

out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hrf")
out.mkdir(parents=True, exist_ok=True)
for name, fn in [("glover", glover_hrf), ("spm", spm_hrf)]:
    for t_r, oversampling in [(1.5, 50), (2.0, 16)]:
        h = fn(t_r, oversampling=oversampling)
        path = out / f"{name}_tr{t_r}_os{oversampling}.txt"
        path.write_text(
            f"# nilearn {nilearn.__version__} {name}_hrf(t_r={t_r}, oversampling={oversampling})\n"
            + "\n".join(repr(float(v)) for v in h)
            + "\n"
        )
        print(path, len(h))
