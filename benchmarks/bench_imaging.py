"""Benchmark: read and observe a whole-body study written as DICOM.

Study: CT 512 x 512 x 300 (0.98 x 0.98 x 3 mm, single-frame files), four SPECT 128^3 (4.8 mm,
multi-frame NM in counts), a NIfTI label map of 20 regions on the CT grid. Measured in a fresh
subprocess: wall time of load_study (discover, read, calibrate, masks) and of observe
(resample each SPECT to the CT grid, region sums), and the peak resident memory of that process.

Usage: python benchmarks/bench_imaging.py [--small] [--workdir DIR]
Goal (issue 3): under 30 s on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_study(folder: Path, small: bool) -> dict:
    from twin.imaging import dicom_write as dw
    from twin.imaging.io import write_nifti
    from twin.imaging.phantom import (
        DEFAULT_START,
        _blur,
        activity_map,
        anatomy,
        example_tacs,
        _region_activity_at,
    )
    from twin.imaging.quantitation import InjectionRecord
    from twin.imaging.resample import resample_to
    from twin.imaging.volume import Volume

    n_xy, n_z, dz = (128, 75, 12.0) if small else (512, 300, 3.0)
    dxy = 500.0 / n_xy
    masks, ct4 = anatomy(4.4)
    for_uid = dw.new_uid("bench-for")
    ct_grid = Volume(np.zeros((n_z, n_xy, n_xy), np.uint8), (dxy, dxy, dz),
                     (-250.0 + dxy / 2, -250.0 + dxy / 2, 5.0 - (n_z - 1) * dz),
                     frame_of_reference_uid=for_uid)
    # 16 phantom regions + 4 extra lesions = 20 regions
    lab = np.asarray(masks.labels.array).copy()
    names = dict(masks.names)
    rng = np.random.default_rng(0)
    for i, (cx, cy, cz) in enumerate([(-60, -40, -300), (80, 0, -380), (-20, 30, -520),
                                      (40, -50, -600)]):
        k = max(names) + 1
        x, y, z = np.round(masks.labels.physical_to_index([cx, cy, cz])).astype(int)
        lab[z - 2:z + 2, y - 2:y + 2, x - 2:x + 2] = k
        names[k] = f"Lesion{i + 1}"
    lab4 = masks.labels.with_array(lab)
    labels = resample_to(lab4, ct_grid, interpolation="nearest").replace(
        frame_of_reference_uid=for_uid)
    ct = resample_to(ct4.replace(frame_of_reference_uid=for_uid), ct_grid, default_value=-1000)
    ct = ct.with_array(np.round(ct.array).astype(np.int16), units="HU")
    patient = {"PatientName": "Bench^Patient", "PatientID": "BENCH", "PatientSex": "M",
               "PatientWeight": "80"}
    study = {"uid": dw.new_uid("bench-study"), "datetime": DEFAULT_START}
    (folder / "CT").mkdir(parents=True)
    dw.write_slices(ct, folder / "CT", modality="CT", patient=patient, study=study,
                    series_uid=dw.new_uid("bench-ct"), series_number=1, description="CT",
                    when=DEFAULT_START, seed="bench-ct")
    write_nifti(labels, folder / "labels.nii.gz")
    (folder / "labels.csv").write_text("label,name\n" + "".join(f"{k},{v}\n"
                                                               for k, v in names.items()))
    spect_grid = Volume(np.zeros((128, 128, 128), np.uint8), (4.8,) * 3,
                        (-304.8, -304.8, 5.0 - 127 * 4.8), frame_of_reference_uid=for_uid)
    tacs = example_tacs(0.0, 0.0)
    inj = InjectionRecord(DEFAULT_START, 7400.0, "lu177-psma-617")
    from twin.imaging.masks import RegionMasks

    m4 = RegionMasks(lab4, tuple(names.items()))
    for i, t in enumerate((4.0, 24.0, 96.0, 168.0)):
        conc, _ = activity_map(m4, _region_activity_at(tacs, "lu177-psma-617", t))
        blurred = lab4.with_array(_blur(conc, lab4.spacing_mm, 12.0), units="MBq/mL")
        exp = resample_to(blurred, spect_grid)
        counts = rng.poisson(np.clip(np.asarray(exp.array, float), 0, None)
                             * spect_grid.voxel_volume_ml * 20.0 * 1200.0)
        (folder / f"NM{i}").mkdir()
        dw.write_nm_tomo(spect_grid.with_array(np.minimum(counts, 65535).astype(np.float32)),
                         folder / f"NM{i}" / "nm.dcm", patient=patient, study=study,
                         series_uid=dw.new_uid(f"bench-nm{i}"), series_number=10 + i,
                         description=f"SPECT {t:g} h", when=DEFAULT_START + timedelta(hours=t),
                         seed=f"bench-nm{i}", injection=inj, frame_duration_ms=20000,
                         frames_in_rotation=60)
    return {"regions": len(names), "ct_shape": list(ct.shape)}


MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
import pbpk_models.radionuclides as r; r.half_life_h("Lu-177")  # radioactivedecay import, ~2.5 s
from twin.imaging.study import load_study
from twin.observe import observe
t1 = time.perf_counter()
st = load_study({folder!r}, masks={folder!r} + "/labels.nii.gz",
                mask_names={folder!r} + "/labels.csv", spect_calibration_cps_per_mbq=20.0)
t2 = time.perf_counter()
obs = observe(st)
t3 = time.perf_counter()
print(json.dumps(dict(imports_s=t1 - t0, load_s=t2 - t1, observe_s=t3 - t2,
                      total_s=t3 - t1, rows=len(obs),
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="128^2 x 75 CT (a quick check)")
    ap.add_argument("--workdir", default=None, help="where to write the study (default: temp)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp) / "study"
        t = time.perf_counter()
        info = make_study(folder, args.small)
        info["write_s"] = time.perf_counter() - t
        out = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(ROOT),
                                                                   folder=str(folder))],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        info.update(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
